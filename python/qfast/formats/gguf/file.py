"""GGUF files (llama.cpp's model format): ``load`` and ``save``.

Needs the ``gguf`` package (``pip install gguf``) for its type tables; the header, metadata and
tensor infos are read and written here (the bytes gguf-py's GGUFWriter writes, faster).

``load(path)`` memory-maps a file: its metadata is decoded, its tensors are views of the file and
nothing is dequantized until ``GGUFTensor.dequantize()`` is called. ``save(path, tensors,
metadata)`` writes a file atomically from loaded tensors, float arrays and ``qfast.gguf.quantize``
results; ``save(path, load(src))`` writes back the same tensors (names, types, shapes, bytes) and
the same metadata (keys, value types, values) with the same alignment.

Metadata values are plain Python values: ``str``, ``int``, ``float`` and ``bool`` for scalars and
a ``list`` of those for arrays, numeric arrays included (e.g. ``tokenizer.ggml.token_type`` is a
``list`` of ``int``). Their GGUF types are in ``value_types``: a ``gguf.GGUFValueType`` for a
scalar, the pair ``(GGUFValueType.ARRAY, element type)`` for an array. ``save`` takes that same
form; for keys it is not given it infers the type (see ``save``).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import numpy.typing as npt

from ..._checks import as_bool, as_int
from ..._files import atomic_write
from .blocks import dequantize

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType, GGUFValueType

    # A scalar's GGUFValueType, or (GGUFValueType.ARRAY, element type) for an array.
    ValueType = Union[GGUFValueType, tuple[GGUFValueType, GGUFValueType]]
    # What ``save`` writes as a tensor.
    TensorLike = Union["GGUFTensor", npt.NDArray[Any], tuple[Any, Any, tuple[int, ...]]]
    # A metadata entry as GGUFWriter takes it: key, value, type, element type (arrays).
    KeyValue = tuple[str, Any, GGUFValueType, Union[GGUFValueType, None]]
    # A tensor as GGUFWriter takes it: name, raw bytes (rows), type.
    RawTensor = tuple[str, npt.NDArray[np.uint8], GGMLQuantizationType]

__all__ = ["REQUIRED_KEYS", "GGUFFile", "GGUFTensor", "load", "save"]

REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    # llama.cpp refuses a Llama file without general.architecture, the context and embedding
    # lengths, the block count, the RMS norm epsilon, the tokenizer model or the token list. The
    # other keys it defaults, to values that make a broken model (no feed-forward, no heads) or
    # that hide a mismatch (head_count_kv, rope dimension, token types); convert_hf_to_gguf.py
    # writes them all. (A "gpt2" BPE tokenizer also needs tokenizer.ggml.merges; save checks it.)
    "llama": (
        "general.architecture",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.rope.dimension_count",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
    ),
}
"""Metadata keys ``save(..., check=True)`` requires, by architecture; other architectures need
``general.architecture`` only."""

# GGUFReader's pseudo-fields for the file header: not metadata keys.
_HEADER_FIELDS = frozenset({"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"})
_DEFAULT_ALIGNMENT = 32  # gguf.GGUF_DEFAULT_ALIGNMENT
_MAX_NAME_BYTES = 63  # llama.cpp's GGML_MAX_NAME (64) less the terminating NUL
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Integer keys llama.cpp reads as uint32 (it checks the type) besides the architecture's own
# ("llama.*", where every integer is a uint32) and the token ids (tokenizer.ggml.*_token_id).
_UINT32_KEYS = frozenset(
    {
        "general.alignment",
        "general.file_type",
        "general.quantization_version",
        "general.base_model.count",
        "general.dataset.count",
        "tokenizer.ggml.token_type_count",
    }
)
_INT_RANGES = {
    "UINT8": (0, 1 << 8),
    "INT8": (-(1 << 7), 1 << 7),
    "UINT16": (0, 1 << 16),
    "INT16": (-(1 << 15), 1 << 15),
    "UINT32": (0, 1 << 32),
    "INT32": (-(1 << 31), 1 << 31),
    "UINT64": (0, 1 << 64),
    "INT64": (-(1 << 63), 1 << 63),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# The dtype of GGUFReader's data for the types it does not give as bytes; all others are uint8.
_PLAIN_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
}


def _gguf() -> ModuleType:
    try:
        import gguf
    except ImportError as e:
        raise ImportError(
            "reading and writing GGUF files needs the gguf package: pip install gguf"
        ) from e
    return gguf


class _MappedFile:
    """The memory map of a loaded file, to check its size before its bytes are read: a file
    truncated under a map raises SIGBUS on access, which kills the process."""

    def __init__(self, path: Path, data: Any) -> None:
        self.path = path
        self.mmap = getattr(data, "_mmap", None)  # np.memmap's mmap.mmap (it holds an fd)
        self.loaded_size = self._size()

    def _size(self) -> int | None:
        try:
            if self.mmap is not None:
                return int(self.mmap.size())  # fstat of the mapped file itself
            return os.stat(self.path).st_size
        except (OSError, ValueError):
            return None

    def check(self, name: str, end: int) -> None:
        size = self._size()
        if size is not None and size < end:
            from ..._qfast import QfastError

            raise QfastError(
                f"{self.path} shrank to {size:,} bytes since it was loaded "
                f"({self.loaded_size:,} bytes then); tensor {name!r} lies up to byte {end:,}. "
                "Reading it through the memory map would crash the process (SIGBUS): load "
                "the file again once it is complete"
            )


@dataclass(frozen=True, repr=False, eq=False)
class GGUFTensor:
    """A tensor of a GGUF file.

    ``type`` is its GGUF type name (``"Q4_1"``, ``"F32"``, ...), ``shape`` its logical shape in
    NumPy order (GGUF lists dimensions the other way round), ``data`` its raw data as
    ``gguf.GGUFReader`` maps it from the file (read-only): uint8 bytes ``(..., row_bytes)`` for
    block types and BF16, an array of ``shape`` for F32, F16, F64, I8, I16, I32 and I64 (float32,
    float16, ...).
    """

    name: str
    type: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]
    # The mapped file and the end of this tensor's bytes in it (``load`` sets it).
    _source: _MappedFile | None = _field(default=None, compare=False)
    _end: int = _field(default=0, compare=False)

    @property
    def nbytes(self) -> int:
        """Size of the raw data in bytes."""
        return int(self.data.nbytes)

    def check_mapped(self) -> None:
        """Raises QfastError if the file this tensor is mapped from has shrunk below the
        tensor's bytes since ``load`` (reading them would kill the process with SIGBUS).
        ``dequantize`` and ``save`` call it; call it before reading ``data`` yourself."""
        if self._source is not None:
            self._source.check(self.name, self._end)

    def evict(self) -> None:
        """Gives the pages of the tensor's bytes in the file's map back to the OS
        (``madvise(MADV_DONTNEED)``): read once, they stop counting in the process's RSS."""
        source = self._source
        if source is not None and source.mmap is not None:
            from ..safetensors import evict_range

            evict_range(source.mmap, self._end - self.nbytes, self._end)

    def dequantize(self) -> npt.NDArray[np.float32]:
        """The values as a new float32 array of ``shape`` (``qfast.gguf.dequantize``; a
        ValueError names a type qfast cannot read, a QfastError a file that shrank since it
        was loaded)."""
        self.check_mapped()
        return dequantize(self.data, self.type, self.shape)

    def __repr__(self) -> str:
        return f"GGUFTensor({self.name!r}, {self.type}, shape={self.shape}, {self.nbytes:,} bytes)"


@dataclass(repr=False, eq=False)
class GGUFFile:
    """A loaded GGUF file: ``metadata`` (key -> value, in file order), ``value_types`` (key ->
    GGUF type, see the module's docstring), ``tensors`` (name -> GGUFTensor, in file order),
    ``alignment`` of the tensor data (``general.alignment``, else 32) and ``path``."""

    path: Path
    metadata: dict[str, Any]
    value_types: dict[str, ValueType]
    tensors: dict[str, GGUFTensor]
    alignment: int

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (``"llama"``, ...), or None if the file has none."""
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, architecture={self.architecture!r}, "
            f"{len(self.tensors)} tensors, {len(self.metadata)} metadata keys)"
        )


def load(path: str | os.PathLike[str]) -> GGUFFile:
    """Opens the GGUF file at ``path``, memory-mapped: tensors are read when used.

    Raises FileNotFoundError if there is no file, and ValueError for a file that is not GGUF
    (version 2 or 3), is truncated or corrupt, is big-endian, or has a nested array (llama.cpp
    rejects those too). Every count, length, type and tensor offset in the header is checked
    against the file's size (and the alignment) before it is used or anything is mapped, so a
    corrupt file is refused in milliseconds, with a message that names the field.
    """
    path = Path(path)
    _gguf()  # ImportError before anything is read
    layout = _scan_header(path)  # the header parsed, every count, length and offset checked
    mapped = np.memmap(path, mode="r")
    source = _MappedFile(path, mapped)
    end = max((t.start + t.nbytes for t in layout.tensors), default=0)
    if source.loaded_size is not None and source.loaded_size < end:
        raise ValueError(
            f"cannot read {path}: its tensors are not where its header puts them (was the file "
            "changed while it was read?); load it again"
        )
    tensors = {t.name: _mapped_tensor(t, mapped, source) for t in layout.tensors}
    return GGUFFile(path, layout.metadata, layout.value_types, tensors, layout.alignment)


def _mapped_tensor(t: _TensorSpan, mapped: Any, source: _MappedFile) -> GGUFTensor:
    """The tensor's bytes in the map, as GGUFReader gives them: an array of ``shape`` for the
    plain types, uint8 rows ``(*shape[:-1], row_bytes)`` for the others."""
    raw = mapped[t.start : t.start + t.nbytes]
    plain = _PLAIN_DTYPES.get(t.type)
    if plain is not None:
        data = raw.view(plain).reshape(t.shape)
    else:
        data = raw.reshape(*t.shape[:-1], t.row_bytes)
    return GGUFTensor(t.name, t.type, t.shape, data, source, t.start + t.nbytes)


# --- reading a file's header ---------------------------------------------------------------------
#
# gguf-py's GGUFReader trusts every count, length and offset in a file (a corrupt count makes it
# loop for hours, an offset of 2**64 - 1 wraps around in uint64 and maps the wrong bytes), and it
# makes a NumPy view per string of a vocabulary (2 s for a 49k-token one). ``_scan_header`` reads
# the header itself (GGUF v2/v3, little-endian: magic, version, tensor and KV counts, KV entries,
# tensor infos), checks each count and length against the bytes left before going on, and each
# tensor's bytes against the data section, with Python ints; its work is bounded by the file's
# size. It decodes the metadata as GGUFReader's ``ReaderField.contents()`` does.

_GGUF_VERSIONS = (2, 3)  # v1 had 32-bit counts; gguf-py and llama.cpp read 2 and 3
_GGUF_VERSION = 3  # the version written (gguf.GGUF_VERSION)
_STRING, _ARRAY = 8, 9  # GGUFValueType ids
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINT32 = 4
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_INT64_MAX = (1 << 63) - 1
_READ_CHUNK = 1 << 20
_U64 = struct.Struct("<Q")
# Scalars by GGUFValueType id, in struct's format (GGUFWriter's): as struct packs and unpacks
# them, and as NumPy reads arrays of them.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                   11: "q", 12: "d"}  # fmt: skip
_SCALAR_STRUCTS = {t: struct.Struct("<" + c) for t, c in _SCALAR_FORMATS.items()}
_ARRAY_DTYPES = {t: np.dtype("<" + c) for t, c in _SCALAR_FORMATS.items()}


@dataclass(frozen=True)
class _TensorSpan:
    """A tensor as the header gives it: where its bytes lie, from the start of the file."""

    name: str
    start: int
    nbytes: int
    type: str  # GGMLQuantizationType name
    shape: tuple[int, ...]  # NumPy order
    row_bytes: int  # the bytes of one row (of shape[-1] values)


@dataclass(frozen=True)
class _Layout:
    """What ``_scan_header`` found: the data section's start, its alignment, the tensors and
    the metadata (decoded, with its value types)."""

    data_start: int
    alignment: int
    tensors: tuple[_TensorSpan, ...]
    metadata: dict[str, Any]
    value_types: dict[str, ValueType]


class _HeaderReader:
    """Reads a file's header forward, refusing any read past the end of the file before it
    happens (with ``size`` taken once, from the open file). The bytes are read, not mapped: a
    file that shrinks meanwhile is a short read, not a SIGBUS."""

    def __init__(self, path: Path, f: Any, size: int) -> None:
        self.path, self.f, self.size = path, f, size
        self.buf = bytearray()  # the file's first len(buf) bytes (grown in place)
        self.pos = 0

    def corrupt(self, what: str) -> ValueError:
        return ValueError(
            f"cannot read {self.path}: a truncated or corrupt GGUF file ({what}); "
            "download or write it again"
        )

    def left(self) -> int:
        return self.size - self.pos

    def need(self, start: int, n: int, what: str) -> None:
        """Makes ``buf`` hold the ``n`` bytes at ``start`` (``what``), or raises if the file
        has fewer."""
        if n > self.size - start:
            raise self.corrupt(
                f"{what} at byte {start:,} takes {n:,} bytes, but only {self.size - start:,} "
                "are left"
            )
        end = start + n
        if end > len(self.buf):
            want = max(end, min(self.size, 2 * len(self.buf) + _READ_CHUNK)) - len(self.buf)
            self.buf += self.f.read(want)
            if end > len(self.buf):
                raise self.corrupt(f"the file ended at byte {len(self.buf):,} while it was read")

    def take(self, n: int, what: str) -> int:
        """Skips ``n`` bytes (``what``), returning where they start."""
        start = self.pos
        self.need(start, n, what)
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        return int.from_bytes(self.buf[self.take(4, what) : self.pos], "little")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.buf[self.take(8, what) : self.pos], "little")

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        raw = self.buf[self.take(n, what) : self.pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"{what} at byte {self.pos - n:,} is not UTF-8") from None

    def value_string(self, key: str, what: str) -> str:
        """A string value of metadata ``key`` (``what``); one that is not UTF-8 is a ValueError
        naming the key."""
        n = self.u64(f"the length of {what}")
        raw = self.buf[self.take(n, what) : self.pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.not_utf8(key, e) from None

    def not_utf8(self, key: str, e: UnicodeDecodeError) -> ValueError:
        return ValueError(
            f"cannot read {self.path}: metadata {key!r} holds a string that is not UTF-8 ({e}); "
            "a corrupt file, or one written by a broken converter"
        )

    def strings(self, n: int, key: str) -> list[str]:
        """An array of ``n`` strings (u64 length, then the bytes) of metadata ``key``."""
        buf, pos = self.buf, self.pos
        out: list[str] = []
        append, length = out.append, _U64.unpack_from
        for j in range(n):
            if pos + 8 > len(buf):  # read on (buf grows in place), or raise
                self.need(pos, 8, f"the length of {key}[{j}]")
            n_bytes = length(buf, pos)[0]
            pos += 8
            end = pos + n_bytes
            if end > len(buf):
                self.need(pos, n_bytes, f"{key}[{j}]")
            try:
                append(buf[pos:end].decode("utf-8"))
            except UnicodeDecodeError as e:
                raise self.not_utf8(key, e) from None
            pos = end
        self.pos = pos
        return out

    def count(self, what: str, item_bytes: int, items: str) -> int:
        """A count of items of at least ``item_bytes`` each, checked against the bytes left."""
        n = self.u64(what)
        if n * item_bytes > self.left():
            raise self.corrupt(
                f"{what} at byte {self.pos - 8:,} is {n:,}: {n:,} {items} take at least "
                f"{n * item_bytes:,} bytes, but only {self.left():,} are left"
            )
        return n


def _scan_header(path: Path) -> _Layout:
    """Reads the header of the GGUF file at ``path`` (ValueError if it is not GGUF v2/v3
    little-endian, or a count, length, type or offset in it is corrupt or points past the end);
    returns its metadata and where its tensors lie."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'")
        r = _HeaderReader(path, f, os.fstat(f.fileno()).st_size)
        r.buf += magic
        r.pos = 4
        version = r.u32("the version")
        if version not in _GGUF_VERSIONS:
            if version and not version & 0xFFFF:
                raise ValueError(
                    f"{path} is a big-endian GGUF file; qfast reads little-endian ones"
                )
            raise ValueError(
                f"{path} is GGUF version {version:,}, which qfast cannot read (it reads versions "
                "2 and 3); convert it with a current llama.cpp"
            )
        n_tensors = r.u64("the tensor count")
        n_kv = r.count("the metadata count", _MIN_KV_BYTES, "metadata entries")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > r.left():
            raise r.corrupt(
                f"the tensor count is {n_tensors:,}, but the {r.left():,} bytes after the "
                f"header hold at most {r.left() // _MIN_TENSOR_INFO_BYTES:,} tensor infos"
            )
        metadata: dict[str, Any] = {}
        value_types: dict[str, ValueType] = {}
        alignment = _scan_metadata(r, n_kv, metadata, value_types)
        infos = [_scan_tensor_info(r, i) for i in range(n_tensors)]
        header_end = r.pos
    data_start = -(-header_end // alignment) * alignment
    names: set[str] = set()
    spans = []
    for name, offset, nbytes, qtype, shape, row_bytes in infos:
        if name in names:
            raise r.corrupt(f"two tensors are named {name!r}")
        names.add(name)
        if offset % alignment:
            raise r.corrupt(
                f"tensor {name!r} has offset {offset:,}, which is not a multiple of the "
                f"alignment {alignment} (GGUF aligns every tensor's data)"
            )
        end = data_start + offset + nbytes
        if end > r.size:
            raise r.corrupt(
                f"tensor {name!r} has offset {offset:,} and {nbytes:,} bytes, so it ends at byte "
                f"{end:,} of the file, which has {r.size:,} (its data section starts at byte "
                f"{data_start:,})"
            )
        spans.append(_TensorSpan(name, data_start + offset, nbytes, qtype, shape, row_bytes))
    return _Layout(data_start, alignment, tuple(spans), metadata, value_types)


def _scan_metadata(
    r: _HeaderReader, n_kv: int, metadata: dict[str, Any], value_types: dict[str, ValueType]
) -> int:
    """Reads ``n_kv`` metadata entries into ``metadata`` and ``value_types`` (the values as
    GGUFReader's ``contents()`` gives them); returns the alignment they set (32 by default)."""
    T = _gguf().GGUFValueType
    alignment = _DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        if key in metadata:
            raise r.corrupt(f"the metadata key {key!r} appears twice")
        at = r.pos
        vtype = r.u32(f"the value type of {key!r}")
        value: Any
        if vtype == _ARRAY:
            element = r.u32(f"the element type of {key!r}")
            if element == _ARRAY:
                raise ValueError(
                    f"{r.path}: metadata {key!r} is a nested array, which GGUF does not allow"
                )
            if element != _STRING and element not in _SCALAR_BYTES:
                raise r.corrupt(f"metadata {key!r} is an array of unknown type {element:,}")
            size = 8 if element == _STRING else _SCALAR_BYTES[element]
            n = r.count(f"the length of array {key!r}", size, "elements")
            if element == _STRING:
                value = r.strings(n, key)
            else:
                start = r.take(n * size, f"the values of {key!r}")
                raw = r.buf[start : r.pos]  # a copy: buf itself must not be exported (it grows)
                value = np.frombuffer(raw, _ARRAY_DTYPES[element]).tolist()
            metadata[key], value_types[key] = value, (T.ARRAY, T(element))
        elif vtype == _STRING:
            metadata[key], value_types[key] = r.value_string(key, f"the value of {key!r}"), T(vtype)
        elif vtype in _SCALAR_BYTES:
            start = r.take(_SCALAR_BYTES[vtype], f"the value of {key!r}")
            value = _SCALAR_STRUCTS[vtype].unpack_from(r.buf, start)[0]
            metadata[key], value_types[key] = value, T(vtype)
        else:
            raise r.corrupt(f"metadata {key!r} has unknown value type {vtype:,} (at byte {at:,})")
        if key == "general.alignment":
            if vtype != _UINT32:
                raise r.corrupt("general.alignment is not a UINT32")
            alignment = metadata[key]
            if alignment == 0 or alignment & (alignment - 1):
                raise r.corrupt(f"general.alignment is {alignment:,}, not a power of two")
    return alignment


def _scan_tensor_info(r: _HeaderReader, i: int) -> tuple[str, int, int, str, tuple[int, ...], int]:
    """Reads tensor info ``i``; returns its name, offset, size in bytes, type name, shape
    (NumPy order) and the bytes of a row."""
    gguf = _gguf()
    name = r.string(f"the name of tensor #{i}")
    n_dims = r.u32(f"the axis count of tensor {name!r}")
    if n_dims > _MAX_DIMS:
        raise r.corrupt(f"tensor {name!r} has {n_dims:,} axes; GGUF allows at most {_MAX_DIMS}")
    dims = [r.u64(f"axis {j} of tensor {name!r}") for j in range(n_dims)]
    type_id = r.u32(f"the type of tensor {name!r}")
    offset = r.u64(f"the offset of tensor {name!r}")
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise r.corrupt(f"tensor {name!r} has unknown type {type_id:,}") from None
    n = 1
    for d in dims:  # llama.cpp: every axis and the element count fit an int64
        n *= d
        if d > _INT64_MAX or n > _INT64_MAX:
            raise r.corrupt(
                f"tensor {name!r} has shape {dims[::-1]}, more elements than int64 holds"
            )
    row = dims[0] if dims else 1
    if row % block_size:
        raise r.corrupt(
            f"tensor {name!r} of type {qtype.name} has rows of {row:,} values, not a multiple of "
            f"its block size {block_size}"
        )
    if not dims and qtype.name not in _PLAIN_DTYPES:  # GGUFReader has no byte shape for it
        raise r.corrupt(f"tensor {name!r} of type {qtype.name} has no axes")
    shape = tuple(dims[::-1])
    return (
        name,
        offset,
        n // block_size * type_size,
        qtype.name,
        shape,
        row // block_size * type_size,
    )


def save(
    path: str | os.PathLike[str],
    tensors: GGUFFile | Mapping[str, TensorLike],
    metadata: Mapping[str, Any] | None = None,
    *,
    architecture: str | None = None,
    alignment: int | None = None,
    value_types: Mapping[str, ValueType] | None = None,
    check: bool = True,
) -> None:
    """Writes a GGUF file at ``path``, atomically: into a temporary file beside it, then renamed.

    ``tensors``: name -> one of

    - a ``GGUFTensor`` (from ``load``): written with its type and raw bytes, unchanged;
    - a float NumPy array: written as F16 if it is float16, else as F32;
    - ``(data, type, shape)``: ``data`` as ``qfast.gguf.quantize(x, type)`` returns it (any
      GGUF type, in the dtype GGUFReader gives it: bytes for block types), ``shape`` the logical
      NumPy shape (``x.shape``).

    Or a ``GGUFFile``, whose tensors, metadata and value types are then the defaults:
    ``save(path, load(src))`` copies a file.

    ``metadata``: key -> value (str, int, float, bool, or a list or 1-D array of one of those).
    ``value_types`` gives a key's GGUF type (``GGUFValueType.UINT8``, ...; for an array
    ``(GGUFValueType.ARRAY, element type)``); the others are inferred: str -> STRING, bool ->
    BOOL, float -> FLOAT32, int -> UINT32 where llama.cpp expects one (the architecture's own
    keys such as ``llama.block_count``, ``tokenizer.ggml.*_token_id``, ``general.file_type``,
    ...; a value outside UINT32's range is an error there, ``check=False`` or not), else INT32
    if it fits, else INT64; lists of str / float / int -> arrays of STRING /
    FLOAT32 / INT32 (INT64 if needed); NumPy arrays by their dtype.

    ``architecture`` (default ``metadata["general.architecture"]``) is written as
    ``general.architecture``; ``alignment`` of the tensor data (default
    ``metadata["general.alignment"]``, else 32) as ``general.alignment`` (UINT32) when the
    metadata has that key or the alignment is not GGUF's default 32. Both arguments win over the
    metadata's values.

    ``check``: require ``REQUIRED_KEYS[architecture]`` (and ``tokenizer.ggml.merges`` for a
    "gpt2" tokenizer), or ``general.architecture`` for other architectures.

    Raises ValueError (naming the key or tensor) for missing keys, values that do not fit their
    type, and tensors whose data does not match their type and shape; nothing is written then.
    gguf-py cannot write empty arrays: those are a ValueError too.
    """
    if isinstance(tensors, GGUFFile):
        metadata = tensors.metadata if metadata is None else metadata
        value_types = tensors.value_types if value_types is None else value_types
        tensors = tensors.tensors
    for arg, value, what in (
        ("tensors", tensors, "tensor name -> tensor"),
        ("metadata", metadata, "key -> value"),
        ("value_types", value_types, "key -> GGUFValueType"),
    ):
        if not isinstance(value, Mapping) and (arg == "tensors" or value is not None):
            also = " or a GGUFFile from load" if arg == "tensors" else ""
            raise TypeError(
                f"save takes {arg} as a dict ({what}){also}, not {type(value).__name__}"
            )
    metadata = dict(metadata or {})
    arch = architecture if architecture is not None else metadata.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise TypeError(f"general.architecture is a str, not {type(arch).__name__}")
    arch = arch or None
    align = alignment if alignment is not None else metadata.get("general.alignment")
    align = _DEFAULT_ALIGNMENT if align is None else as_int(align, "alignment")
    if align <= 0 or align & (align - 1):
        raise ValueError(f"the alignment must be a power of two, not {align!r}")
    if as_bool(check, "check"):
        _check_required(metadata, arch)
    kvs = _metadata_entries(metadata, value_types or {}, arch, int(align))
    raw = [_raw_tensor(name, tensor) for name, tensor in tensors.items()]
    with atomic_write(path) as tmp:
        _write(tmp, arch, kvs, raw)


def _check_required(metadata: Mapping[str, Any], architecture: str | None) -> None:
    required = list(REQUIRED_KEYS.get(architecture or "", ("general.architecture",)))
    if architecture in REQUIRED_KEYS and metadata.get("tokenizer.ggml.model") == "gpt2":
        required.append("tokenizer.ggml.merges")
    present = {*metadata, "general.architecture"} if architecture else set(metadata)
    missing = [key for key in required if key not in present]
    if missing:
        raise ValueError(
            f"a {architecture or 'GGUF'} file needs the metadata keys {', '.join(missing)} "
            "(llama.cpp cannot load it without them); pass check=False to write it anyway"
        )


def _metadata_entries(
    metadata: Mapping[str, Any],
    value_types: Mapping[str, ValueType],
    architecture: str | None,
    alignment: int,
) -> list[KeyValue]:
    """The entries to write, in order: general.architecture left out (GGUFWriter writes it
    first, from its ``arch``), general.alignment set to ``alignment``."""
    T = _gguf().GGUFValueType
    items = {key: value for key, value in metadata.items() if key != "general.architecture"}
    if "general.alignment" in items or alignment != _DEFAULT_ALIGNMENT:
        items["general.alignment"] = alignment
    entries: list[KeyValue] = []
    for key, value in items.items():
        if not isinstance(key, str) or not key or key in _HEADER_FIELDS:
            raise ValueError(f"{key!r} is not a metadata key")
        if key == "general.alignment":  # GGUF readers require a UINT32
            vtype, element = T.UINT32, None
        elif key in value_types:
            vtype, element = _given_type(key, value, value_types[key])
        else:
            vtype, element = _inferred_type(key, value, architecture)
        entries.append((key, _encode(key, value, vtype, element), vtype, element))
    return entries


def _given_type(key: str, value: Any, given: ValueType) -> tuple[GGUFValueType, Any]:
    T = _gguf().GGUFValueType
    vtype, element = given if isinstance(given, tuple) else (given, None)
    vtype = T(vtype)
    if vtype == T.ARRAY and element is None:
        element = _element_type(key, value)
    if element is not None and vtype != T.ARRAY:
        raise ValueError(f"metadata {key!r}: an element type is for an ARRAY, not {vtype.name}")
    return vtype, None if element is None else T(element)


def _inferred_type(key: str, value: Any, architecture: str | None) -> tuple[GGUFValueType, Any]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return _gguf().GGUFValueType.ARRAY, _element_type(key, value)
    prefix = key.split(".", 1)[0]
    uint32 = (
        key in _UINT32_KEYS
        or prefix in (architecture, "clip")
        or (key.startswith("tokenizer.ggml.") and key.endswith("_token_id"))
    )
    return _scalar_type(key, value, uint32), None


def _scalar_type(key: str, value: Any, uint32: bool) -> GGUFValueType:
    T = _gguf().GGUFValueType
    if isinstance(value, (bool, np.bool_)):
        return T.BOOL
    if isinstance(value, (int, np.integer)):
        if uint32:  # llama.cpp reads it as a UINT32 (and refuses any other type)
            return T.UINT32  # _encode_scalar refuses a value outside its range
        return T.INT32 if -(1 << 31) <= value < 1 << 31 else T.INT64
    if isinstance(value, (float, np.floating)):
        return T.FLOAT32
    if isinstance(value, str):
        return T.STRING
    raise TypeError(
        f"metadata {key!r}: GGUF stores str, int, float, bool or lists of those, "
        f"not {type(value).__name__}"
    )


def _element_type(key: str, values: Any) -> GGUFValueType:
    T = _gguf().GGUFValueType
    if isinstance(values, np.ndarray):
        name = "STRING" if values.dtype.kind == "U" else values.dtype.name.upper()
        if name not in T.__members__ or name == "ARRAY":
            raise TypeError(f"metadata {key!r}: GGUF has no array of {values.dtype}")
        return T[name]
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(
            f"metadata {key!r}: cannot infer the element type of {_short(values)}; "
            "give value_types[key] = (GGUFValueType.ARRAY, element type)"
        )
    types = {_scalar_type(key, v, uint32=False) for v in values}
    if len(types) == 1:
        return types.pop()
    if types <= {T.INT32, T.INT64, T.FLOAT32}:
        return T.FLOAT32 if T.FLOAT32 in types else T.INT64
    raise ValueError(f"metadata {key!r}: an array mixes {', '.join(sorted(t.name for t in types))}")


def _encode(key: str, value: Any, vtype: GGUFValueType, element: GGUFValueType | None) -> Any:
    """``value`` as GGUFWriter packs it (plain Python values), checked against its type."""
    if element is None:
        return _encode_scalar(key, value, vtype)
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"metadata {key!r}: an ARRAY is a list, not {_short(value)}")
    items = value.tolist() if isinstance(value, np.ndarray) else list(value)
    if not items:
        raise ValueError(f"metadata {key!r}: gguf-py's GGUFWriter cannot write an empty array")
    if _plain_items_fit(items, element.name):
        return items
    return [_encode_scalar(f"{key}[{i}]", v, element) for i, v in enumerate(items)]


def _plain_items_fit(items: list[Any], name: str) -> bool:
    """All ``items`` are plain str / bool / int / float values that ``_encode_scalar`` would
    pass unchanged as ``name`` (a vocabulary's 49k strings checked at once); False sends them
    one by one through ``_encode_scalar``, for its conversions and its errors."""
    kinds = set(map(type, items))
    if name == "STRING" or name == "BOOL":
        return kinds == {str if name == "STRING" else bool}
    if name in _INT_RANGES:
        lo, hi = _INT_RANGES[name]
        return kinds == {int} and lo <= min(items) and max(items) < hi
    if name in ("FLOAT32", "FLOAT64") and kinds == {float}:
        if name == "FLOAT64":
            return True
        size = np.abs(np.array(items, np.float64))
        return not bool(np.any(size[np.isfinite(size)] > _FLOAT32_MAX))
    return False


def _encode_scalar(where: str, value: Any, vtype: GGUFValueType) -> Any:
    name = vtype.name
    is_bool = isinstance(value, (bool, np.bool_))
    if name == "STRING":
        ok = isinstance(value, str)
    elif name == "BOOL":
        ok = is_bool
    elif name in _INT_RANGES:
        lo, hi = _INT_RANGES[name]
        ok = isinstance(value, (int, np.integer)) and not is_bool and bool(lo <= value < hi)
    elif name in ("FLOAT32", "FLOAT64"):
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not is_bool
        if ok and name == "FLOAT32" and math.isfinite(value):
            ok = bool(abs(value) <= _FLOAT32_MAX)
    else:  # an ARRAY inside an array
        ok = False
    if not ok:
        lo, hi = _INT_RANGES.get(name, (0, 0))
        fit = f" (from {lo} to {hi - 1})" if name in _INT_RANGES else ""
        raise ValueError(f"metadata {where}: {_short(value)} is not a valid {name}{fit}")
    return value.item() if isinstance(value, np.generic) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _raw_tensor(name: str, tensor: TensorLike) -> RawTensor:
    if not isinstance(name, str) or not name or len(name.encode()) > _MAX_NAME_BYTES:
        raise ValueError(
            f"tensor name {name!r}: GGUF names are non-empty str of at most {_MAX_NAME_BYTES} bytes"
        )
    if isinstance(tensor, GGUFTensor):
        tensor.check_mapped()
        data, qtype, shape = tensor.data, tensor.type, tensor.shape
    elif isinstance(tensor, tuple) and len(tensor) == 3:
        data, qtype, shape = tensor
        if not isinstance(shape, (tuple, list)):
            raise TypeError(
                f"tensor {name!r}: the shape of a (data, type, shape) tuple is a tuple of "
                f"ints, not {_short(shape)}"
            )
    elif isinstance(tensor, np.ndarray) and np.issubdtype(tensor.dtype, np.floating):
        qtype = "F16" if tensor.dtype == np.float16 else "F32"
        data, shape = tensor.astype(_PLAIN_DTYPES[qtype], copy=False), tensor.shape
    else:
        raise TypeError(
            f"tensor {name!r}: expected a GGUFTensor, a float NumPy array or a (data, type, "
            f"shape) tuple from qfast.gguf.quantize, not {_short(tensor)}"
        )
    return _raw_rows(name, np.asarray(data), _ggml_type(name, qtype), tuple(shape))


def _ggml_type(name: str, qtype: Any) -> GGMLQuantizationType:
    Q = _gguf().GGMLQuantizationType
    if not isinstance(qtype, (str, int, np.integer)) or isinstance(qtype, bool):
        raise TypeError(
            f"tensor {name!r}: a GGUF type is a name such as 'Q4_0' or a "
            f"GGMLQuantizationType, not {_short(qtype)}"
        )
    try:
        return Q[qtype.upper()] if isinstance(qtype, str) else Q(int(qtype))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"tensor {name!r}: unknown GGUF type {qtype!r}") from None


def _raw_rows(
    name: str, data: npt.NDArray[Any], qtype: GGMLQuantizationType, shape: tuple[int, ...]
) -> RawTensor:
    """The tensor's bytes, shaped ``(*shape[:-1], row_bytes)`` as GGUFWriter takes raw data."""
    shape = tuple(as_int(d, f"tensor {name!r}: shape") for d in shape)
    if not 1 <= len(shape) <= _MAX_DIMS or min(shape) < 0:
        raise ValueError(f"tensor {name!r}: GGUF tensors have 1 to 4 axes, not shape {shape}")
    block_size, type_size = _gguf().GGML_QUANT_SIZES[qtype]
    if shape[-1] % block_size:
        raise ValueError(
            f"tensor {name!r}: {qtype.name} stores blocks of {block_size} values along the last "
            f"axis, which has {shape[-1]} (shape {shape})"
        )
    dtype = np.dtype(_PLAIN_DTYPES.get(qtype.name, np.uint8))
    if data.dtype != dtype:
        raise ValueError(
            f"tensor {name!r}: {qtype.name} data must be {dtype} (as qfast.gguf.quantize and "
            f"GGUFReader give it), not {data.dtype}"
        )
    row_bytes = shape[-1] // block_size * type_size
    nbytes = math.prod(shape[:-1]) * row_bytes
    if data.nbytes != nbytes:
        raise ValueError(
            f"tensor {name!r}: {qtype.name} data of shape {shape} takes {nbytes} bytes, but "
            f"the data given ({data.dtype} {data.shape}) has {data.nbytes}"
        )
    rows = np.ascontiguousarray(data).reshape(-1).view(np.uint8).reshape(*shape[:-1], row_bytes)
    return name, rows, qtype


def _write(
    path: Path, architecture: str | None, entries: list[KeyValue], tensors: list[RawTensor]
) -> None:
    alignment = _alignment_of(entries)
    infos = [
        (name, qtype, _logical_shape(rows, qtype), rows.nbytes) for name, rows, qtype in tensors
    ]
    with open(path, "wb") as f:
        f.write(_header_bytes(architecture, entries, infos, alignment))
        for _, rows, _ in tensors:
            _write_tensor(f, rows, alignment)


def _alignment_of(entries: list[KeyValue]) -> int:
    return next((v for k, v, _, _ in entries if k == "general.alignment"), _DEFAULT_ALIGNMENT)


def _logical_shape(rows: npt.NDArray[np.uint8], qtype: GGMLQuantizationType) -> tuple[int, ...]:
    """The shape of raw rows ``(..., row_bytes)`` in values (gguf's quant_shape_from_byte_shape)."""
    block_size, type_size = _gguf().GGML_QUANT_SIZES[qtype]
    return (*rows.shape[:-1], rows.shape[-1] // type_size * block_size)


def _header_bytes(
    architecture: str | None,
    entries: list[KeyValue],
    tensors: list[tuple[str, GGMLQuantizationType, tuple[int, ...], int]],
    alignment: int,
) -> bytes:
    """The file up to its tensor data, padded to ``alignment``: the bytes GGUFWriter writes for
    ``GGUFWriter(path, arch=architecture or "")`` given ``entries`` with ``add_key_value``
    (``general.alignment`` with ``add_custom_alignment``) and ``tensors`` (name, type, logical
    shape, bytes) with ``add_tensor_info``."""
    STRING = _gguf().GGUFValueType.STRING
    if architecture:  # GGUFWriter's add_architecture (add_string skips "")
        entries = [("general.architecture", architecture, STRING, None), *entries]
    out = [b"GGUF", struct.pack("<IQQ", _GGUF_VERSION, len(tensors), len(entries))]
    for key, value, vtype, element in entries:
        out.append(_string_bytes(key))
        out.append(struct.pack("<I", vtype))
        if element is None:
            out.append(_scalar_bytes(value, int(vtype)))
        else:
            out.append(struct.pack("<IQ", element, len(value)))
            out.append(_array_bytes(value, int(element)))
    offset = 0
    for name, qtype, shape, nbytes in tensors:
        out.append(_string_bytes(name))
        out.append(struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape[::-1], qtype, offset))
        offset += -(-nbytes // alignment) * alignment
    header = b"".join(out)
    return header + bytes(-len(header) % alignment)


def _string_bytes(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U64.pack(len(raw)) + raw


def _scalar_bytes(value: Any, vtype: int) -> bytes:
    if vtype == _STRING:
        return _string_bytes(value)
    return _SCALAR_STRUCTS[vtype].pack(value)


def _array_bytes(values: list[Any], element: int) -> bytes:
    if element == _STRING:
        encoded = [v.encode("utf-8") for v in values]
        parts: list[bytes] = [b""] * (2 * len(encoded))
        parts[0::2] = [_U64.pack(len(e)) for e in encoded]
        parts[1::2] = encoded
        return b"".join(parts)
    return struct.pack(f"<{len(values)}{_SCALAR_FORMATS[element]}", *values)


def _write_tensor(f: Any, rows: npt.NDArray[Any], alignment: int) -> None:
    """Writes a tensor's bytes at ``f``'s position, then zeros up to the alignment."""
    flat = np.ascontiguousarray(rows).reshape(-1).view(np.uint8)
    f.write(flat.data)
    f.write(bytes(-flat.nbytes % alignment))


def save_streamed(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    tensors: Sequence[tuple[str, str, tuple[int, ...]]],
    data: Callable[[str], npt.NDArray[Any]],
    *,
    value_types: Mapping[str, ValueType] | None = None,
    check: bool = True,
) -> None:
    """Writes a GGUF file tensor by tensor, atomically, holding one tensor at a time.

    ``tensors`` lists ``(name, type, shape)`` in file order (the header is written first);
    ``data(name)`` is then called once per tensor, in that order, and returns its data as
    :func:`save` takes a ``(data, type, shape)`` tuple's (``qfast.gguf.quantize``'s bytes, or
    float32 / float16 values for F32 / F16). ``metadata``, ``value_types`` and ``check`` as
    for :func:`save`. Raises ValueError when a tensor's data does not match its type and shape
    (nothing is left at ``path``).
    """
    metadata = dict(metadata)
    arch = metadata.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise TypeError(f"general.architecture is a str, not {type(arch).__name__}")
    align = metadata.get("general.alignment")
    align = _DEFAULT_ALIGNMENT if align is None else as_int(align, "alignment")
    if as_bool(check, "check"):
        _check_required(metadata, arch)
    kvs = _metadata_entries(metadata, value_types or {}, arch, int(align))
    specs = []
    names: set[str] = set()
    for name, qtype, shape in tensors:
        if name in names:
            raise ValueError(f"tensor {name!r} is listed twice; GGUF tensor names are unique")
        names.add(name)
        t = _ggml_type(name, qtype)
        block_size, type_size = _gguf().GGML_QUANT_SIZES[t]
        shape = tuple(int(d) for d in shape)
        if shape[-1] % block_size:
            raise ValueError(
                f"tensor {name!r}: {t.name} stores blocks of {block_size} values along the last "
                f"axis, which has {shape[-1]} (shape {shape})"
            )
        specs.append(
            (name, t, shape, math.prod(shape[:-1]) * (shape[-1] // block_size) * type_size)
        )
    alignment = _alignment_of(kvs)
    header = _header_bytes(arch, kvs, specs, alignment)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for name, t, shape, _ in specs:
            _, rows, _ = _raw_rows(name, np.asarray(data(name)), t, shape)
            _write_tensor(f, rows, alignment)

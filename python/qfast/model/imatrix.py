"""The importance matrix: llama-imatrix's statistics, computed by qfast, in llama.cpp's files.

``importance_matrix(model, text)`` computes what ``llama-imatrix`` (``tools/imatrix/
imatrix.cpp`` of llama.cpp, as pinned by ``scripts/llama_cpp.py``) collects, and
``ImportanceMatrix.save`` / :func:`load_importance_matrix` write and read both of its files, so
``llama-quantize --imatrix`` reads what qfast writes and qfast reads what llama-imatrix writes.

The definition (``IMatrixCollector::collect_imatrix`` and ``compute_imatrix``):

- The text is tokenized as llama.cpp does (``common_tokenize`` with BOS when the vocabulary
  adds one, special tokens not parsed) and cut into ``n_chunk = n_tokens // n_ctx`` chunks of
  ``n_ctx`` tokens (at most ``chunks``), the rest dropped. When the vocabulary adds BOS, the
  first token of every chunk is *replaced* by BOS. Each chunk is one sequence from position 0.
- For every matrix multiplication whose weight is a block's (``blk.*``: attn_q, attn_k, attn_v,
  attn_output, ffn_gate, ffn_up, ffn_down), the input rows ``x`` (one per token) are summed as
  ``in_sum2[j] += x[j] * x[j]`` in float32, token after token, and ``counts`` is the number of
  tokens. The LM head (``output.weight``) is left out, as llama-imatrix leaves it out without
  ``--process-output`` (a tied head is ``token_embd.weight``, never collected).
- llama.cpp skips a multiplication over fewer than 16 tokens, and the tokens reach the
  multiplications in physical batches (``-ub``, 512 tokens): ``n_batch`` (llama-imatrix's
  ``-b``) reproduces its schedule (:func:`schedule`). The default, ``n_batch = n_ctx``, is one
  chunk per decode, as ``llama-imatrix -b N_CTX`` runs: every token is counted, in order (for
  ``n_ctx`` above 512, all but a last piece under 16 tokens). llama-imatrix's own default ``-b
  2048`` runs ``2048 // n_ctx`` chunks per decode in physical batches of ``512 // n_seqs``
  tokens of each chunk in turn; where those do not divide ``n_ctx`` the last few tokens of each
  chunk fall into a piece under 16 tokens and are not counted (3 chunks of 512 in one decode:
  pieces of 170, 1530 tokens counted, not 1536). ``n_batch=2048`` gives exactly those counts.
- Attention: llama.cpp keeps K/V in float16 by default (``-ctk``/``-ctv f16``, and flash
  attention in float16); qfast attends in float32, as ``llama-imatrix -fa off -ctk f32 -ctv
  f32`` does. The float16 cache moves llama-imatrix's values by about 4e-3 relative (SmolLM2).
- ``chunk_count`` is ``max(counts) // n_ctx``; ``chunk_size`` is ``n_ctx``.

``ImportanceMatrix.weights(name)`` is what ``llama-quantize`` passes to the quantizers as
``quant_weights``: ``in_sum2 / counts`` in float32 (1 where a count is 0).

The files (llama-imatrix writes GGUF by default, the legacy format with ``--output-format dat``):

- GGUF: ``general.type = "imatrix"``, ``imatrix.datasets`` (array of str), ``imatrix.chunk_count``
  and ``imatrix.chunk_size`` (uint32); per weight, sorted by name, ``<name>.in_sum2`` (F32,
  ``[n_mat, n_cols]``) and ``<name>.counts`` (F32, ``[n_mat, 1]``), raw sums and token counts.
- Legacy ``.dat`` (little-endian): int32 entry count; per entry, sorted by name, int32 name
  length, the name, int32 ``ncall = ceil(max(counts) / chunk_size)``, int32 ``nval``, ``nval``
  float32 values ``(in_sum2 / count) * ncall``; then int32 chunk count, int32 length and the
  dataset's name. llama.cpp reads its values back as ``sums`` with ``counts = [ncall]``, so
  that ``sums / counts`` is the mean again: :func:`load_importance_matrix` does the same
  (``ImportanceMatrix.legacy`` is then True).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._checks import check_at_least
from .._files import atomic_write_bytes

__all__ = [
    "ImportanceMatrix",
    "gguf_weight_name",
    "hf_linear_name",
    "importance_matrix",
    "load_importance_matrix",
    "schedule",
]

_F32 = np.float32
#: llama.cpp's physical batch (``-ub``, ``n_ubatch``) by default: a chunk runs in pieces of it.
UBATCH = 512
#: llama-imatrix's ``-c`` by default: the chunk size a legacy file (which has none) is written with.
DEFAULT_CHUNK_SIZE = 512
#: llama-imatrix ignores multiplications over fewer tokens (``src1->ne[1] < 16``).
MIN_TOKENS = 16
_GGUF_MAGIC = b"GGUF"
_SUM2, _COUNTS = ".in_sum2", ".counts"
_KEY_DATASETS = "imatrix.datasets"
_KEY_CHUNK_COUNT = "imatrix.chunk_count"
_KEY_CHUNK_SIZE = "imatrix.chunk_size"
_INT32_MAX = (1 << 31) - 1
_UINT32_MAX = (1 << 32) - 1
#: Hugging Face linear (within a block) -> llama.cpp's tensor (``blk.N.<this>.weight``).
_BLOCK_LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_LINEARS = {v: k for k, v in _BLOCK_LINEARS.items()}
_HF_LINEAR = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_GGUF_WEIGHT = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def gguf_weight_name(hf: str) -> str | None:
    """llama.cpp's tensor name of a qfast (Hugging Face) linear name:
    ``model.layers.0.self_attn.q_proj`` -> ``blk.0.attn_q.weight``, ``lm_head`` ->
    ``output.weight``; None for a name llama.cpp's Llama graph does not have."""
    if hf == "lm_head":
        return "output.weight"
    m = _HF_LINEAR.match(hf.removesuffix(".weight"))
    if m and m.group(2) in _BLOCK_LINEARS:
        return f"blk.{int(m.group(1))}.{_BLOCK_LINEARS[m.group(2)]}.weight"
    return None


def hf_linear_name(gguf: str) -> str | None:
    """The qfast (Hugging Face) linear name of a llama.cpp weight name (the inverse of
    :func:`gguf_weight_name`); None for a name qfast does not know."""
    if gguf == "output.weight":
        return "lm_head"
    m = _GGUF_WEIGHT.match(gguf)
    if m and m.group(2) in _GGUF_LINEARS:
        return f"model.layers.{int(m.group(1))}.{_GGUF_LINEARS[m.group(2)]}"
    return None


def _corrupt(path: Path, what: str) -> ValueError:
    return ValueError(
        f"cannot read {path}: a truncated or corrupt importance matrix file ({what}); "
        "compute it again (qfast imatrix or llama-imatrix)"
    )


@dataclass(eq=False)
class ImportanceMatrix:
    """llama-imatrix's statistics, by llama.cpp's weight name (``blk.0.attn_q.weight``).

    ``sums[name]``: float32, the sum of ``x²`` over the tokens per input column of the weight,
    shape ``(n_cols,)`` (``(n_mat, n_cols)`` for a stack of experts, as an MoE file holds);
    ``counts[name]``: int64 ``(n_mat,)``, the tokens summed. ``chunks`` (``imatrix.chunk_count``)
    and ``chunk_size`` (``imatrix.chunk_size``, the ``n_ctx`` of the run), ``datasets`` (the
    texts' names, ``imatrix.datasets``).

    ``legacy`` is True for a matrix read from a legacy ``.dat`` file: ``sums`` then holds the
    file's values (the per-column mean times ``ncall``) and ``counts`` ``[ncall]``, as
    llama.cpp reads them; ``weights`` is the mean either way.
    """

    sums: dict[str, npt.NDArray[np.float32]]
    counts: dict[str, npt.NDArray[np.int64]]
    chunks: int
    chunk_size: int
    datasets: list[str] = field(default_factory=list)
    legacy: bool = False

    def __post_init__(self) -> None:
        if set(self.sums) != set(self.counts):
            raise ValueError(
                "ImportanceMatrix: sums and counts must name the same tensors; "
                f"only in one of them: {sorted(set(self.sums) ^ set(self.counts))[:4]}"
            )
        for name in self.sums:
            s = np.asarray(self.sums[name], dtype=_F32)
            c = np.asarray(self.counts[name]).astype(np.int64).reshape(-1)
            n_mat = 1 if s.ndim == 1 else s.shape[0]
            if s.ndim not in (1, 2) or s.size == 0 or c.size != n_mat:
                raise ValueError(
                    f"ImportanceMatrix: {name!r} has sums of shape {s.shape} and "
                    f"{c.size} counts; give (n_cols,) sums with one count, or (n_mat, n_cols) "
                    "sums with n_mat counts"
                )
            if np.any(c < 0):
                raise ValueError(f"ImportanceMatrix: {name!r} has a negative count {c.min()}")
            self.sums[name], self.counts[name] = s, c
        self.datasets = [str(d) for d in self.datasets]

    # -- reading -----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The weights' llama.cpp names, sorted (the files' order)."""
        return sorted(self.sums)

    @property
    def hf_names(self) -> dict[str, str]:
        """llama.cpp name -> qfast (Hugging Face) linear name, for the names qfast knows."""
        out = {}
        for name in self.names:
            hf = hf_linear_name(name)
            if hf is not None:
                out[name] = hf
        return out

    def __len__(self) -> int:
        return len(self.sums)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name, False) is not None

    def _key(self, name: str, required: bool = True) -> str | None:
        if name in self.sums:
            return name
        g = gguf_weight_name(name)
        if g is not None and g in self.sums:
            return g
        if required:
            raise KeyError(
                f"the importance matrix has no entry {name!r}; it has {len(self.sums)} "
                f"weights, e.g. {', '.join(self.names[:3])}"
            )
        return None

    def weights(self, name: str) -> npt.NDArray[np.float32]:
        """The per-column mean of ``x²`` for weight ``name`` (llama.cpp's name, or qfast's
        linear name such as ``model.layers.0.mlp.down_proj``): ``sums / counts`` in float32,
        1 where a count is 0 (a legacy file: its values over ``ncall``; the values themselves
        where ``ncall`` is 0), exactly what ``llama-quantize`` passes as ``quant_weights``."""
        key = self._key(name)
        assert key is not None
        s, c = self.sums[key], self.counts[key]
        s2 = s.reshape(c.size, -1)
        if self.legacy:
            ncall = int(c[0])
            out = s2 / _F32(ncall) if ncall > 0 else s2.copy()
        else:
            out = np.ones_like(s2)
            for j, count in enumerate(c):
                if count > 0:
                    out[j] = s2[j] / _F32(count)
        return out.reshape(s.shape).astype(_F32, copy=False)

    def __repr__(self) -> str:
        kind = ", legacy" if self.legacy else ""
        return (
            f"ImportanceMatrix({len(self)} weights, {self.chunks} chunks of {self.chunk_size}, "
            f"datasets={self.datasets!r}{kind})"
        )

    # -- writing -----------------------------------------------------------------------------

    def _raw(self, name: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Raw sums ``(n_mat, n_cols)`` and token counts (a legacy matrix is scaled back by
        ``chunk_size`` as llama-imatrix does when it loads one)."""
        s, c = self.sums[name], self.counts[name]
        s2 = s.reshape(c.size, -1)
        if not self.legacy:
            return s2, c
        size = self._chunk_size()
        return s2 * _F32(size), np.full(c.size, int(c[0]) * size, np.int64)

    def _chunk_size(self) -> int:
        """The chunk size to write: a legacy file has none, llama-imatrix then uses its ``-c``
        (512 by default)."""
        return self.chunk_size if self.chunk_size > 0 else DEFAULT_CHUNK_SIZE

    def save(self, path: str | os.PathLike[str], *, format: str | None = None) -> None:
        """Writes the matrix at ``path``, atomically, in llama-imatrix's GGUF format (suffix
        ``.gguf``) or its legacy one (``.dat``); ``format`` (``"gguf"`` / ``"dat"``) overrides
        the suffix. Both are what llama-imatrix 0.3.36 writes, byte for byte, for the same
        statistics and dataset names."""
        path = Path(path)
        if format is None:
            suffix = path.suffix.lower()
            if suffix not in (".gguf", ".dat"):
                raise ValueError(
                    f"ImportanceMatrix.save: cannot tell the format of {path} from its suffix; "
                    'name it .gguf or .dat, or pass format="gguf" / "dat"'
                )
            format = suffix[1:]
        if format not in ("gguf", "dat"):
            raise ValueError(
                f'ImportanceMatrix.save: format must be "gguf" or "dat", not {format!r}'
            )
        if not self.sums:
            raise ValueError("ImportanceMatrix.save: the matrix has no entries; nothing to write")
        if format == "gguf":
            self._save_gguf(path)
        else:
            atomic_write_bytes(path, self._dat_bytes())

    def _save_gguf(self, path: Path) -> None:
        from ..formats.gguf.file import _gguf, save

        vt = _gguf().GGUFValueType  # ImportError with the install hint without gguf

        for what, v in (("chunks", self.chunks), ("chunk_size", self.chunk_size)):
            if not 0 <= v <= _UINT32_MAX:
                raise ValueError(f"ImportanceMatrix.save: {what} {v} does not fit a uint32")
        tensors: dict[str, Any] = {}
        for name in self.names:
            s2, c = self._raw(name)
            n_mat = c.size
            # ggml drops trailing dimensions of 1: one matrix is a 1-D tensor, as llama writes
            tensors[name + _SUM2] = s2.reshape(-1) if n_mat == 1 else s2
            cf = c.astype(_F32)
            tensors[name + _COUNTS] = cf if n_mat == 1 else cf.reshape(n_mat, 1)
        datasets = self.datasets or [""]
        chunks = int(self.chunks)
        if self.legacy:  # as llama-imatrix counts them once it has loaded the file: max ncall
            chunks = max(int(c[0]) for c in self.counts.values())
        metadata = {
            "general.type": "imatrix",
            _KEY_DATASETS: datasets,
            _KEY_CHUNK_COUNT: chunks,
            _KEY_CHUNK_SIZE: self._chunk_size(),
        }
        value_types: dict[str, Any] = {
            "general.type": vt.STRING,
            _KEY_DATASETS: (vt.ARRAY, vt.STRING),
            _KEY_CHUNK_COUNT: vt.UINT32,
            _KEY_CHUNK_SIZE: vt.UINT32,
        }
        save(path, tensors, metadata, value_types=value_types, check=False)

    def _dat_bytes(self) -> bytes:
        """The legacy file (``save_imatrix_legacy``)."""
        out = bytearray()
        entries = []
        chunk_size = self._chunk_size()
        for name in self.names:
            c = self.counts[name]
            if not self.legacy and not np.any(c > 0):
                continue  # llama-imatrix skips an entry with no data
            entries.append(name)
        out += struct.pack("<i", len(entries))
        for name in entries:
            raw = name.encode("utf-8")
            s, c = self.sums[name], self.counts[name]
            if self.legacy:
                ncall, values = int(c[0]), s.reshape(-1)
            else:
                ncall = (int(c.max()) + chunk_size - 1) // chunk_size
                s2 = s.reshape(c.size, -1)
                count = c.astype(_F32)[:, None]
                value = np.where(count == 0, _F32(1), s2)
                count = np.where(count == 0, _F32(1), count)
                values = ((value / count) * _F32(ncall)).astype(_F32).reshape(-1)
            if ncall > _INT32_MAX or values.size > _INT32_MAX:
                raise ValueError(f"ImportanceMatrix.save: {name!r} is too large for a .dat file")
            out += struct.pack("<i", len(raw)) + raw
            out += struct.pack("<ii", ncall, values.size)
            out += values.astype("<f4").tobytes()
        dataset = (self.datasets[-1] if self.datasets else "").encode("utf-8")
        out += struct.pack("<i", min(int(self.chunks), _INT32_MAX))
        out += struct.pack("<i", len(dataset)) + dataset
        return bytes(out)


# -- reading files -------------------------------------------------------------------------------


def load_importance_matrix(path: str | os.PathLike[str]) -> ImportanceMatrix:
    """Reads an importance matrix that llama-imatrix (or :meth:`ImportanceMatrix.save`) wrote:
    GGUF (told by its magic, whatever the suffix, as llama.cpp tells it) or the legacy format.

    Raises FileNotFoundError if there is no file, ValueError if it is truncated, corrupt, or a
    GGUF file that holds no importance matrix (a model, say)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _GGUF_MAGIC:
        return _load_gguf(path)
    return _load_dat(path, path.read_bytes())


def _load_gguf(path: Path) -> ImportanceMatrix:
    from ..formats.gguf.file import load

    g = load(path)
    meta = g.metadata
    pairs: dict[str, list[Any]] = {}
    for tname, t in g.tensors.items():
        for suffix, slot in ((_SUM2, 0), (_COUNTS, 1)):
            if tname.endswith(suffix) and len(tname) > len(suffix):
                pairs.setdefault(tname[: -len(suffix)], [None, None])[slot] = t
    if not pairs:
        raise ValueError(
            f"{path} is a GGUF file without an importance matrix (no <name>.in_sum2 / "
            f"<name>.counts tensors; general.type is {meta.get('general.type')!r}): give a "
            "file that llama-imatrix or qfast imatrix wrote"
        )
    sums: dict[str, npt.NDArray[np.float32]] = {}
    counts: dict[str, npt.NDArray[np.int64]] = {}
    for name, (s, c) in pairs.items():
        if s is None or c is None:
            raise _corrupt(path, f"{name!r} has {'no sums' if s is None else 'no counts'}")
        if s.type != "F32" or c.type != "F32":
            raise _corrupt(path, f"{name!r}: sums and counts must be F32, not {s.type} / {c.type}")
        s.check_mapped()
        c.check_mapped()
        sv = np.array(s.data, dtype=_F32).reshape(-1)
        cv = np.array(c.data, dtype=_F32).reshape(-1)
        if cv.size == 0 or sv.size == 0 or sv.size % cv.size:
            raise _corrupt(path, f"{name!r} has {sv.size} sums for {cv.size} counts")
        if not (np.all(np.isfinite(cv)) and np.all(cv >= 0)) or np.any(cv >= 2.0**62):
            raise _corrupt(path, f"{name!r} has counts that are not token counts")
        # llama.cpp rounds the stored counts (std::lround)
        counts[name] = np.floor(cv.astype(np.float64) + 0.5).astype(np.int64)
        sums[name] = sv if cv.size == 1 else sv.reshape(cv.size, -1)

    def u32(key: str) -> int:
        v = meta.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int):
            raise _corrupt(path, f"{key} is {v!r}, not an integer")
        return v

    datasets = meta.get(_KEY_DATASETS, [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise _corrupt(path, f"{_KEY_DATASETS} is not an array of strings")
    return ImportanceMatrix(sums, counts, u32(_KEY_CHUNK_COUNT), u32(_KEY_CHUNK_SIZE), datasets)


def _load_dat(path: Path, data: bytes) -> ImportanceMatrix:
    """The legacy format (``common_imatrix_load_legacy``), every length checked."""
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or n > len(data) - pos:
            raise _corrupt(
                path, f"{what} at byte {pos:,} needs {n:,} bytes, {len(data) - pos:,} are left"
            )
        pos += n
        return data[pos - n : pos]

    def i32(what: str) -> int:
        return int(struct.unpack("<i", take(4, what))[0])

    if len(data) < 4:
        raise ValueError(
            f"{path} is neither a GGUF nor a legacy importance matrix file ({len(data)} bytes)"
        )
    n_entries = i32("the entry count")
    if n_entries < 1 or n_entries * 12 > len(data) - pos:
        raise _corrupt(path, f"the entry count is {n_entries:,}")
    sums: dict[str, npt.NDArray[np.float32]] = {}
    counts: dict[str, npt.NDArray[np.int64]] = {}
    for i in range(n_entries):
        raw = take(i32(f"the name length of entry {i + 1}"), f"the name of entry {i + 1}")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(path, f"the name of entry {i + 1} is not UTF-8") from None
        ncall = i32(f"the call count of {name!r}")
        nval = i32(f"the value count of {name!r}")
        if nval < 1 or ncall < 0:
            raise _corrupt(path, f"{name!r} has {nval} values and a call count of {ncall}")
        values = np.frombuffer(take(4 * nval, f"the values of {name!r}"), "<f4").astype(_F32)
        if name in sums:
            raise _corrupt(path, f"{name!r} appears twice")
        sums[name] = values
        counts[name] = np.array([ncall], np.int64)
    chunks, datasets = 0, []
    if pos < len(data):  # the trailing chunk count and dataset name are optional
        chunks = i32("the chunk count")
        if pos < len(data):
            raw = take(i32("the dataset name's length"), "the dataset name")
            datasets = [raw.decode("utf-8", errors="replace")] if raw else []
    if pos != len(data):
        raise _corrupt(path, f"{len(data) - pos:,} bytes follow the dataset name")
    return ImportanceMatrix(sums, counts, max(chunks, 0), 0, datasets, legacy=True)


# -- computing ----------------------------------------------------------------------------------


def _token_stream(model: Any, text_or_ids: Any) -> np.ndarray:
    if isinstance(text_or_ids, str):
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise ValueError(
                "importance_matrix: the model has no tokenizer; load it from a checkpoint with "
                "a tokenizer.json or a GGUF vocabulary, or pass token ids"
            )
        return np.asarray(tok.encode(text_or_ids), dtype=np.int64).reshape(-1)
    if isinstance(text_or_ids, (bytes, bytearray)):
        raise TypeError("importance_matrix: give the text as a str (decode the bytes first)")
    arr = np.asarray(text_or_ids)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"importance_matrix: text_or_ids must be a str or integer token ids, got {arr.dtype}"
        )
    if arr.ndim != 1:
        raise ValueError(
            f"importance_matrix: token ids must be 1-d (one stream, cut into chunks), got shape "
            f"{arr.shape}"
        )
    return arr.astype(np.int64)


def schedule(n_ctx: int, n_seqs: int, n_batch: int, n_ubatch: int = UBATCH) -> np.ndarray:
    """The rows llama-imatrix sums when ``n_seqs`` chunks of ``n_ctx`` tokens share a decode,
    in its order: indices into the chunks' rows side by side (chunk ``s``'s position ``t`` is
    row ``s * n_ctx + t``), without the rows of physical batches under 16 tokens.

    ``n_batch`` (``-b``, as llama-imatrix clamps it: at most ``n_seqs * n_ctx``) and
    ``n_ubatch`` (``-ub``) as llama.cpp takes them: one chunk per decode runs in batches of
    ``n_batch`` tokens, each split into physical batches of ``n_ubatch`` in order
    (``split_simple``); several chunks per decode are split into physical batches that take
    ``n_ubatch // n_seqs`` tokens of every chunk, chunk after chunk (``split_equal``)."""
    n_ubatch = min(n_ubatch, n_batch)
    pieces: list[np.ndarray] = []
    if n_seqs == 1:
        for b in range(0, n_ctx, n_batch):
            end = min(b + n_batch, n_ctx)
            pieces += [np.arange(u, min(u + n_ubatch, end)) for u in range(b, end, n_ubatch)]
    else:
        k = max(1, n_ubatch // n_seqs)
        for t in range(0, n_ctx, k):
            rows = np.arange(t, min(t + k, n_ctx))
            pieces.append((np.arange(n_seqs)[:, None] * n_ctx + rows).reshape(-1))
    kept = [p for p in pieces if len(p) >= MIN_TOKENS]
    return np.concatenate(kept) if kept else np.zeros(0, np.int64)


class _Accumulator:
    """``acc[j] += x[j] * x[j]`` over rows in order, in float32, as llama-imatrix sums
    (``fma``: each step one fused multiply-add, as compilers that contract ``a += x * x``
    build it; else a rounded product, then a rounded sum, as its x86-64 builds do)."""

    def __init__(self, fma: bool) -> None:
        self.fma = fma
        self.sums: dict[str, npt.NDArray[np.float32]] = {}
        self.counts: dict[str, int] = {}

    def add(self, names: Iterable[str], x: npt.NDArray[np.float32]) -> None:
        names = list(names)
        first = self.sums.get(names[0])
        acc = np.zeros(x.shape[1], _F32) if first is None else first
        if self.fma:
            # x*x is exact in float64 (48 significant bits); one rounding to float32 per step
            acc64 = acc.astype(np.float64)
            x64 = x.astype(np.float64)
            for row in x64:
                acc64 = (acc64 + row * row).astype(_F32).astype(np.float64)
            acc = acc64.astype(_F32)
        else:
            # an axis-0 reduction runs row after row (no pairwise summation across rows)
            stacked = np.empty((x.shape[0] + 1, x.shape[1]), _F32)
            stacked[0] = acc
            np.multiply(x, x, out=stacked[1:])
            acc = np.add.reduce(stacked, axis=0)
        for name in names:
            self.sums[name] = acc.copy()
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]


def importance_matrix(
    model: Any,
    text_or_ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    n_ctx: int = 512,
    chunks: int | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    dataset: str | None = None,
    n_batch: int | None = None,
    fma: bool = False,
) -> ImportanceMatrix:
    """llama-imatrix's importance matrix of ``model`` on a text (see the module doc).

    Args:
        model: a qfast causal model (``qfast.load_model``) with the Llama forward pass
            (``embed``, ``block(i, h, capture=)``, ``num_blocks``).
        text_or_ids: the calibration text (tokenized by the model's tokenizer, BOS first when
            the vocabulary adds one) or its token ids, one 1-d stream.
        n_ctx: tokens per chunk (llama-imatrix ``-c``).
        chunks: at most this many chunks (``--chunks``); default all ``n_tokens // n_ctx``.
        progress: True for a progress bar (when ``tqdm`` is installed), or a callable
            ``progress(done, total)`` called after each chunk.
        dataset: the text's name for the file (``imatrix.datasets``); default ``"<text>"`` or
            ``"<ids>"``. ``qfast imatrix`` passes the calibration file's path, as llama-imatrix
            does.
        n_batch: llama-imatrix's ``-b``, to reproduce its schedule: the default ``n_ctx`` is
            one chunk per decode, every token counted when ``n_ctx`` is at most 512 (and all
            but a last piece under 16 tokens beyond); its own default 2048 runs ``2048 //
            n_ctx`` chunks per decode, which drops a few tokens of each chunk for some chunk
            counts (see the module doc and :func:`schedule`).
        fma: sum with one fused multiply-add per step, as llama-imatrix does where the
            compiler contracts ``acc += x * x`` (ARM builds), instead of a rounded product and
            a rounded sum, as its x86-64 builds do (``scripts/llama_cpp.py``'s: ``mulss`` then
            ``addss``); the two differ by float32 rounding only.

    Returns:
        An :class:`ImportanceMatrix` keyed by llama.cpp's weight names.

    Raises:
        TypeError: ``model`` has no block-wise forward pass, or ``text_or_ids`` is neither.
        ValueError: the text has fewer than ``n_ctx`` tokens, the schedule counts no token
            (pieces under 16 tokens), or a bad argument.
    """
    n_ctx = check_at_least(n_ctx, "n_ctx", 1)
    if chunks is not None:
        chunks = check_at_least(chunks, "chunks", 1)
    for attr in ("embed", "block", "num_blocks"):
        if not hasattr(model, attr):
            raise TypeError(
                f"importance_matrix: {type(model).__name__} has no {attr}; give a causal model "
                "from qfast.load_model (Llama family)"
            )
    ids = _token_stream(model, text_or_ids)
    n_max = len(ids) // n_ctx
    if n_max < 1:
        raise ValueError(
            f"importance_matrix: the text has {len(ids)} tokens, fewer than one chunk of "
            f"n_ctx = {n_ctx}; give a longer text or a smaller n_ctx (llama-imatrix itself "
            f"asks for 2 * n_ctx = {2 * n_ctx})"
        )
    n_chunk = n_max if chunks is None else min(chunks, n_max)
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_id", None) if getattr(tok, "add_bos", False) else None
    if n_batch is None:
        n_batch = n_ctx
    n_batch = check_at_least(n_batch, "n_batch", 1)
    n_seq = max(1, n_batch // n_ctx)
    n_batch = min(n_batch, n_seq * n_ctx)  # llama-imatrix's clamp: below or a multiple
    # the row order of each decode's chunks (None: all rows in order)
    orders: dict[int, np.ndarray | None] = {}
    for n in {min(n_seq, n_chunk), n_chunk % n_seq or n_seq} - {0}:
        o = schedule(n_ctx, n, n_batch)
        orders[n] = None if np.array_equal(o, np.arange(n * n_ctx)) else o
    if all(o is not None and len(o) == 0 for o in orders.values()):
        raise ValueError(
            f"importance_matrix: with n_ctx {n_ctx} and n_batch {n_batch}, every "
            "multiplication runs over fewer than 16 tokens, which llama-imatrix does not count; "
            "give a larger n_ctx"
        )
    order: list[np.ndarray | None] = [None]

    acc = _Accumulator(fma)
    group: list[str] = []
    group_x: list[Any] = [None]

    def flush() -> None:
        if group:
            x = group_x[0]
            o = order[0]
            if o is None:
                acc.add(group, x)
            elif len(o):
                acc.add(group, x[o])
            group.clear()
            group_x[0] = None

    def hook(name: str, x: npt.NDArray[np.float32]) -> None:
        g = gguf_weight_name(name)
        if g is None or not g.startswith("blk."):
            return  # llama-imatrix collects blk.* weights only (no --process-output)
        if group_x[0] is not x:
            flush()
            group_x[0] = x
        group.append(g)  # q/k/v (and gate/up) share one input array: summed once

    bar = None
    if progress is True:
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]

            bar = tqdm(total=n_chunk, unit="chunk", desc="imatrix", leave=False)
        except ImportError:
            bar = None
    try:
        for c in range(0, n_chunk, n_seq):
            n = min(n_seq, n_chunk - c)
            w = ids[c * n_ctx : (c + n) * n_ctx].reshape(n, n_ctx).copy()
            if bos is not None:
                w[:, 0] = bos
            order[0] = orders[n]
            h = model.embed(w)
            for i in range(model.num_blocks):
                h = model.block(i, h, capture=hook)
                flush()
            if bar is not None:
                bar.update(n)
            elif callable(progress):
                progress(c + n, n_chunk)
    finally:
        if bar is not None:
            bar.close()
        free = getattr(model, "free_scratch", None)
        if callable(free):
            free()
    if not acc.sums:
        raise TypeError(
            f"importance_matrix: {type(model).__name__}'s forward pass captured no linear "
            "llama.cpp names (blk.N.attn_q.weight, ...); only Llama-family models are supported"
        )
    counts = {k: np.array([v], np.int64) for k, v in acc.counts.items()}
    chunk_count = max(acc.counts.values()) // n_ctx
    if dataset is None:
        dataset = "<text>" if isinstance(text_or_ids, str) else "<ids>"
    return ImportanceMatrix(acc.sums, counts, chunk_count, n_ctx, [dataset])

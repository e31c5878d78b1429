"""Measure a model: perplexity, KL divergence and top-1 agreement against a reference,
embedding cosine for encoders, bits per weight and size (``qfast.evaluate``).

Causal language models (``model.kind == "causal"``)
-----------------------------------------------------

The text is tokenized once, as a whole, with ``model.tokenizer.encode(text)`` (which adds BOS
when the vocabulary says so); ``max_tokens`` keeps its first tokens. Then one of two
conventions:

``convention="windows"`` (the default): the tokens are cut into consecutive, non-overlapping
windows of ``n_ctx`` tokens, each run on its own (a fresh context, positions from 0), and every
predicted token counts: in a window of ``n`` tokens, the logits at positions ``0 .. n-2``
predict tokens ``1 .. n-1`` (``n - 1`` predictions per window; the first token of each window
is context only). The remainder that does not fill a window is a last, shorter window when it
has at least 2 tokens, so every token but the first of each window is predicted once. Tokens
are not replaced by BOS: only the text's own first token is BOS (when the vocabulary adds one).

``convention="llama.cpp"``: ``llama-perplexity``'s convention exactly (``tools/perplexity/
perplexity.cpp`` of llama.cpp, as pinned by ``scripts/llama_cpp.py``):

- the text needs at least ``2 * n_ctx`` tokens; ``n_chunk = n_tokens // n_ctx`` windows
  (chunks) of ``n_ctx`` tokens, the rest dropped;
- when the vocabulary adds BOS, the first token of every chunk is *replaced* by BOS;
- only the second half of each chunk is scored: with ``first = n_ctx // 2``, the logits at
  positions ``first .. n_ctx-2`` predict tokens ``first+1 .. n_ctx-1``
  (``n_ctx - 1 - first`` predictions per chunk);
- ``llama-perplexity -f FILE`` drops one trailing newline of the file before tokenizing
  (``qfast eval --text`` does the same under this convention; :func:`evaluate` tokenizes the
  string it is given).

Both conventions compute each token's negative log-likelihood as llama.cpp does:
``nll = log(sum_j exp(x_j - max)) - (x_tok - max)`` with the exponentials in float32 and their
sum and the logarithm in float64 (no float64 copy of the logits), summed in float64.
Perplexity is ``exp(mean nll)``; its ``±`` is llama.cpp's estimate
``ppl * sqrt((mean(nll²) - mean(nll)²) / (count - 1))``.

With a ``reference`` model (the same vocabulary, checked: both tokenizers give the same ids for
the text, and the logits have the same width), over the same scored tokens:

- ``kl_divergence``: the mean over tokens of ``KL(P_ref || P_model) = sum_j p_ref,j *
  (log p_ref,j - log p_model,j)``, ``±`` its standard error (as llama.cpp reports it: 0 when
  there are 10 tokens or fewer);
- ``top1_agreement``: the fraction of tokens where both models' most likely next token (the
  first index of the maximum logit) is the same ("Same top p"), ``±`` ``sqrt(p (1-p) /
  (count-1))``;
- the reference's perplexity and ``perplexity / reference_perplexity``.

Under ``"windows"`` the KL divergence is exact, computed in float64 over the whole vocabulary.
Under ``"llama.cpp"`` it is what ``llama-perplexity --kl-divergence`` computes: the reference's
log-probabilities are first stored as llama.cpp stores them in its ``--kl-divergence-base``
file (16-bit codes over ``[max(min, max - 16), max]`` of the logits, scale and offset in
float32), the terms with a stored log-probability of ``-16`` or less are left out, each term
is computed in float32 and summed in float64, and the reference's top token is the first
maximum of the *stored* log-probabilities. (llama.cpp's KL mode also prints perplexities, with
the reference's taken from its stored log-probabilities; qfast's perplexities always come from
the logits themselves, so they may differ from that printout in the 5th digit.)

Encoders (``model.kind == "encoder"``)
--------------------------------------

The text (a string) is split into its non-empty lines (paragraphs, as the held-out Wikipedia
sample stores them), or is given as a sequence of strings. ``model.embed`` and
``reference.embed`` embed them (mean pooling and L2 normalisation as sentence-transformers
does); the result is the cosine similarity of each row pair, computed in float64: mean and
minimum. A reference is required.

Always
------

Bits per weight, over the linear weights (``model.linear_names()``) and over all tensors: a
:class:`qfast.QTensor` counts its ``nbytes`` (codes, scales, zero points), a float tensor the
dtype it is stored in (``model.weights.stored_dtype(name)``: float16 counts 16 bits, a GGUF
block type its block size, e.g. ``Q4_1`` 5 bits). Size: the bytes of the checkpoint's tensor
files on disk when nothing was replaced since loading (``model.weights.replaced()`` is empty),
otherwise the bytes the tensors take as held (replacements as assigned, the rest as stored in
the checkpoint). The number of tokens scored and the seconds taken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._checks import check_at_least
from ..formats.gguf.blocks import type_info
from ..tensor.qtensor import QTensor
from .base import WeightStore

__all__ = ["CONVENTIONS", "Evaluation", "evaluate", "weight_stats"]

#: The perplexity conventions :func:`evaluate` knows.
CONVENTIONS = ("windows", "llama.cpp")

_F32 = np.float32
_F64 = np.float64
# rows of logits per log-softmax step: 2M elements (8 MB float32, 16 MB float64)
_CHUNK_ELEMENTS = 1 << 21
# the tensor files a checkpoint folder's size counts
_TENSOR_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
_FLOAT_BITS = {"bfloat16": 16.0, "BF16": 16.0, "F16": 16.0, "F32": 32.0, "F64": 64.0}


# --------------------------------------------------------------------------------------------
# the result


@dataclass
class Evaluation:
    """What :func:`evaluate` measured; ``str()`` / :meth:`table` give a one-table summary.

    Fields that do not apply (KL without a reference, perplexity for an encoder) are ``None``.
    """

    #: the model's description (architecture and source).
    model: str
    #: ``"causal"`` or ``"encoder"``.
    kind: str
    #: the reference's description, if any.
    reference: str | None = None
    #: ``"windows"`` or ``"llama.cpp"`` (causal models).
    convention: str | None = None
    n_ctx: int | None = None
    #: windows (chunks) run.
    windows: int = 0
    #: tokens of the text used (after ``max_tokens``).
    text_tokens: int = 0
    #: tokens scored (predictions counted); for encoders, the texts embedded.
    tokens: int = 0
    perplexity: float | None = None
    perplexity_error: float | None = None
    reference_perplexity: float | None = None
    reference_perplexity_error: float | None = None
    #: ``perplexity / reference_perplexity``.
    perplexity_ratio: float | None = None
    kl_divergence: float | None = None
    kl_divergence_error: float | None = None
    #: the fraction (0..1) of scored tokens with the same most likely next token.
    top1_agreement: float | None = None
    top1_agreement_error: float | None = None
    #: encoders: cosine of each text's embedding with the reference's.
    cosine_mean: float | None = None
    cosine_min: float | None = None
    bits_per_weight_linear: float = math.nan
    bits_per_weight: float = math.nan
    linear_weights: int = 0
    weights: int = 0
    size_bytes: int = 0
    #: how :attr:`size_bytes` was counted: ``"on disk"`` or ``"in memory"``.
    size_kind: str = "in memory"
    seconds: float = 0.0
    #: anything else worth a line in the table.
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The one-table summary (what ``qfast eval`` prints)."""
        rows: list[tuple[str, str]] = []
        if self.kind == "causal":
            if self.convention == "llama.cpp":
                how = f"llama.cpp convention: second half of {self.windows} chunks of {self.n_ctx}"
            else:
                how = f"{self.windows} windows of up to {self.n_ctx}, every prediction"
            rows.append(("tokens scored", f"{self.tokens:,} of {self.text_tokens:,} ({how})"))
            rows.append(("perplexity", _pm(self.perplexity, self.perplexity_error, 4)))
            if self.reference is not None:
                rows.append(
                    (
                        "reference perplexity",
                        _pm(self.reference_perplexity, self.reference_perplexity_error, 4),
                    )
                )
                rows.append(("perplexity ratio", _num(self.perplexity_ratio, 5)))
                rows.append(
                    ("KL divergence (mean)", _pm(self.kl_divergence, self.kl_divergence_error, 6))
                )
                top = None if self.top1_agreement is None else 100 * self.top1_agreement
                err = None if self.top1_agreement_error is None else 100 * self.top1_agreement_error
                rows.append(("top-1 agreement", _pm(top, err, 3, "%")))
        else:
            rows.append(("texts embedded", f"{self.tokens:,}"))
            rows.append(("cosine (mean)", _num(self.cosine_mean, 6)))
            rows.append(("cosine (min)", _num(self.cosine_min, 6)))
        rows.append(
            (
                "bits/weight (linears)",
                f"{_num(self.bits_per_weight_linear, 3)} over {self.linear_weights:,} weights",
            )
        )
        rows.append(
            (
                "bits/weight (all)",
                f"{_num(self.bits_per_weight, 3)} over {self.weights:,} weights",
            )
        )
        rows.append(("size", f"{_fmt_bytes(self.size_bytes)} ({self.size_kind})"))
        rows.append(("seconds", f"{self.seconds:.1f}"))
        rows.extend(("note", n) for n in self.notes)
        title = f"{self.model}" + (f" vs reference {self.reference}" if self.reference else "")
        width = max(len(k) for k, _ in rows)
        lines = [title, f"{'measure':<{width}}  value", f"{'-' * width}  {'-' * 5}"]
        lines += [f"{k:<{width}}  {v}" for k, v in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _num(v: float | None, digits: int) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}f}"


def _pm(v: float | None, err: float | None, digits: int, unit: str = "") -> str:
    if v is None:
        return "-"
    s = _num(v, digits) + unit
    return s if err is None else f"{s} ± {_num(err, digits)}{unit}"


def _fmt_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit} ({int(n):,} bytes)"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------------
# bits per weight and size


def _element_bits(dtype: str) -> float:
    """Storage bits per element of a float dtype name (NumPy's or a GGUF type's)."""
    if dtype in _FLOAT_BITS:
        return _FLOAT_BITS[dtype]
    if dtype.islower():  # a NumPy dtype name
        try:
            return 8.0 * np.dtype(dtype).itemsize
        except TypeError:
            return math.nan
    try:  # a GGUF block type (qfast reads no type it has no geometry for)
        info = type_info(dtype)
    except (ValueError, TypeError):
        return math.nan
    return 8.0 * info.type_size / info.block_size


def _tensor_bits(weights: WeightStore, name: str, numel: int) -> float:
    dtype = weights.stored_dtype(name)
    if dtype == "qtensor":
        value = weights[name]
        assert isinstance(value, QTensor)
        return 8.0 * value.nbytes
    return numel * _element_bits(dtype)


def _source_bytes(source: Path) -> int | None:
    """The bytes of a checkpoint's tensor files: the file itself, or a folder's tensor files."""
    try:
        if source.is_file():
            return source.stat().st_size
        if source.is_dir():
            files = [p for p in source.iterdir() if p.suffix in _TENSOR_SUFFIXES and p.is_file()]
            return sum(p.stat().st_size for p in files) if files else None
    except OSError:
        return None
    return None


def weight_stats(model: Any) -> dict[str, Any]:
    """Bits per weight and size of a model's tensors (see the module doc).

    Returns:
        ``{"bits_per_weight_linear", "bits_per_weight", "linear_weights", "weights",
        "size_bytes", "size_kind"}``; ``size_kind`` is ``"on disk"`` (the checkpoint's tensor
        files, when no tensor was replaced) or ``"in memory"`` (the tensors as held).
    """
    weights = getattr(model, "weights", None)
    if not isinstance(weights, WeightStore):
        raise TypeError(
            f"{type(model).__name__} has no WeightStore: evaluate takes a qfast model "
            "(qfast.load_model)"
        )
    linear = {f"{name}.weight" for name in model.linear_names()}
    bits_all = bits_lin = 0.0
    n_all = n_lin = 0
    for name in weights:
        numel = math.prod(weights.shape(name))
        bits = _tensor_bits(weights, name, numel)
        bits_all += bits
        n_all += numel
        if name in linear:
            bits_lin += bits
            n_lin += numel
    source = model.source
    on_disk = None if weights.replaced() or source is None else _source_bytes(Path(source))
    return {
        "bits_per_weight_linear": bits_lin / n_lin if n_lin else math.nan,
        "bits_per_weight": bits_all / n_all if n_all else math.nan,
        "linear_weights": n_lin,
        "weights": n_all,
        "size_bytes": int(on_disk) if on_disk is not None else round(bits_all / 8),
        "size_kind": "on disk" if on_disk is not None else "in memory",
    }


# --------------------------------------------------------------------------------------------
# log-softmax statistics over rows of logits (float32 [rows, vocab])


def _row_chunks(n_rows: int, vocab: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    for lo in range(0, n_rows, step):
        yield slice(lo, min(lo + step, n_rows))


def _normalizer(x: npt.NDArray[np.float32]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the max (float32) and ``sum exp(x - max)`` (float32 terms, float64 sum)."""
    m = x.max(axis=1)
    s = np.exp(x - m[:, None]).sum(axis=1, dtype=_F64)
    return m, s


def _nll(x: npt.NDArray[np.float32], targets: np.ndarray) -> npt.NDArray[np.float64]:
    """Per row ``-log softmax(x)[target]``, as llama-perplexity computes it."""
    out = np.empty(len(x), dtype=_F64)
    for sl in _row_chunks(len(x), x.shape[1]):
        xc = x[sl]
        m, s = _normalizer(xc)
        picked = xc[np.arange(len(xc)), targets[sl]]
        out[sl] = np.log(s) - (picked - m).astype(_F64)
    return out


def _log_softmax64(x: npt.NDArray[np.float32]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``log softmax(x)`` and ``softmax(x)``, in float64 (for a chunk of rows)."""
    lp = x.astype(_F64)
    lp -= lp.max(axis=1, keepdims=True)
    p = np.exp(lp)
    s = p.sum(axis=1, keepdims=True)
    p /= s
    lp -= np.log(s)
    return lp, p


def _kl_exact(
    x: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per row ``KL(softmax(ref) || softmax(x))`` in float64, and whether the argmaxes agree."""
    kl = np.empty(len(x), dtype=_F64)
    same = np.empty(len(x), dtype=bool)
    for sl in _row_chunks(len(x), x.shape[1]):
        xc, rc = x[sl], ref[sl]
        lp, p = _log_softmax64(rc)
        lq, _ = _log_softmax64(xc)
        lp -= lq
        kl[sl] = np.einsum("ij,ij->i", p, lp)
        same[sl] = xc.argmax(axis=1) == rc.argmax(axis=1)
    return kl, same


def llamacpp_base(
    ref: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.uint16]]:
    """Rows of reference logits as ``llama-perplexity --kl-divergence-base`` stores them
    (perplexity.cpp's ``log_softmax(n_vocab, logits, log_prob, tok)``): per row a float32
    ``scale`` and ``min_log_prob`` and 16-bit codes, the log-probability of token ``j`` being
    ``scale * code[j] + min_log_prob``, over ``[max(min, max - 16), max]`` of the logits.

    Returns:
        ``(scale [rows], min_log_prob [rows], codes uint16 [rows, vocab])``.
    """
    maxb = ref.max(axis=1)
    minb = np.maximum(ref.min(axis=1), maxb - _F32(16))
    lse = np.log(np.exp(ref - maxb[:, None]).sum(axis=1, dtype=_F64)).astype(_F32)
    min_log_prob = (minb - maxb) - lse
    scale = (maxb - minb) / _F32(65535)
    with np.errstate(divide="ignore"):
        inv = np.where(scale != 0, _F32(1) / scale, _F32(0)).astype(_F32)
    codes = np.rint(inv[:, None] * (ref - minb[:, None]))  # nearest_int: half to even
    codes[~(ref > minb[:, None])] = 0
    codes[scale == 0] = 0
    return scale, min_log_prob, codes.astype(np.uint16)


def _kl_llamacpp(
    x: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per row llama-perplexity's ``--kl-divergence`` term and top-1 agreement: the reference's
    log-probabilities stored as 16-bit codes (:func:`llamacpp_base`), then ``sum p_base *
    (log p_base - log p)`` over the stored values above -16, in float32 terms summed in float64
    (perplexity.cpp's ``log_softmax(..., kld)``)."""
    kl = np.empty(len(x), dtype=_F64)
    same = np.empty(len(x), dtype=bool)
    for sl in _row_chunks(len(x), x.shape[1]):
        xc, rc = x[sl], ref[sl]
        scale, min_log_prob, codes = llamacpp_base(rc)
        base = scale[:, None] * codes.astype(_F32) + min_log_prob[:, None]  # float32
        # the model: max_logit + log_sum_exp in float32
        mq = xc.max(axis=1)
        lse_q = np.log(np.exp(xc - mq[:, None]).sum(axis=1, dtype=_F64)).astype(_F32)
        top = mq + lse_q
        terms = np.exp(base) * ((base - xc) + top[:, None])  # float32
        terms[~(base > _F32(-16))] = 0
        kl[sl] = terms.sum(axis=1, dtype=_F64)
        same[sl] = xc.argmax(axis=1) == base.argmax(axis=1)
    return kl, same


class _Moments:
    """Sum and sum of squares of per-token values, in float64 (llama.cpp's accumulators)."""

    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.s2 = 0.0

    def add(self, v: np.ndarray) -> None:
        self.n += len(v)
        self.s += float(np.sum(v, dtype=_F64))
        self.s2 += float(np.dot(v.astype(_F64), v.astype(_F64)))

    def mean(self) -> float:
        return self.s / self.n

    def stderr(self, min_count: int = 1) -> float:
        """llama.cpp's ``sqrt((mean(v²) - mean(v)²) / (n - 1))`` (0 when not positive)."""
        if self.n <= min_count or self.n < 2:
            return 0.0
        mean = self.s / self.n
        var = self.s2 / self.n - mean * mean
        return math.sqrt(var / (self.n - 1)) if var > 0 else 0.0


# --------------------------------------------------------------------------------------------
# evaluate


def _describe(model: Any) -> str:
    arch = getattr(model, "arch", "") or type(model).__name__
    source = getattr(model, "source", None)
    return f"{arch} ({Path(source).name})" if source is not None else str(arch)


def _kind(model: Any, what: str) -> str:
    kind = getattr(model, "kind", "")
    if not kind:  # a model class without the attribute: what it can do
        can = [
            k for k, attr in (("causal", "logits"), ("encoder", "embed")) if hasattr(model, attr)
        ]
        kind = can[0] if can else ""
    if kind not in ("causal", "encoder"):
        raise TypeError(
            f"{what} is a {type(model).__name__} of kind {kind!r}: evaluate takes a causal "
            "language model or an encoder (a qfast model, e.g. from qfast.load_model)"
        )
    return kind


def _progress(total: int, unit: str, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, desc=desc, leave=False)


def evaluate(
    model: Any,
    text: str | Sequence[str],
    reference: Any = None,
    *,
    n_ctx: int = 512,
    convention: str = "windows",
    max_tokens: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Evaluation:
    """Measures a model on a text (see the module doc for the exact conventions).

    Args:
        model: a qfast model (``qfast.load_model``): a causal language model (perplexity) or
            an encoder (embedding cosine against ``reference``).
        text: the text; a sequence of strings is joined with newlines (causal models) or taken
            as the texts to embed (encoders).
        reference: the model to compare with (usually the float original): KL divergence and
            top-1 agreement for causal models, cosine for encoders (required there). It must
            have the same vocabulary.
        n_ctx: the window (context) length in tokens, causal models.
        convention: ``"windows"`` (non-overlapping windows, every prediction counted) or
            ``"llama.cpp"`` (``llama-perplexity``'s: the second half of each window).
        max_tokens: use only the text's first ``max_tokens`` tokens (causal models).
        batch_size: windows per forward pass (texts per ``embed`` call for encoders); default:
            ``max(1, 1024 // n_ctx)`` windows, 32 texts.
        progress: show a progress bar (when ``tqdm`` is installed).

    Returns:
        An :class:`Evaluation`; ``print()`` it for the one-table summary.

    Raises:
        TypeError: ``model`` / ``reference`` is not a causal LM or an encoder, or an argument
            has the wrong type.
        ValueError: a bad argument, a text too short for the convention, a model without a
            tokenizer, models of different kinds or vocabularies, an encoder without a
            reference.
    """
    t0 = time.perf_counter()
    kind = _kind(model, "model")
    if reference is not None and _kind(reference, "reference") != kind:
        raise ValueError(
            f"the model is {kind} but the reference is {_kind(reference, 'reference')}: "
            "compare models of the same kind"
        )
    if isinstance(text, str):
        pass
    elif isinstance(text, Sequence) and all(isinstance(t, str) for t in text):
        text = list(text)
    else:
        raise TypeError(f"text must be a str or a sequence of str, got {type(text).__name__}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    n_ctx = check_at_least(n_ctx, "n_ctx", 3 if convention == "llama.cpp" else 2)
    if max_tokens is not None:
        max_tokens = check_at_least(max_tokens, "max_tokens", 1)
    if batch_size is not None:
        batch_size = check_at_least(batch_size, "batch_size", 1)

    if kind == "encoder":
        ev = _evaluate_encoder(model, text, reference, batch_size or 32, progress)
    else:
        joined = text if isinstance(text, str) else "\n".join(text)
        ev = _evaluate_causal(
            model,
            joined,
            reference,
            n_ctx=n_ctx,
            convention=convention,
            max_tokens=max_tokens,
            batch_size=batch_size or max(1, 1024 // n_ctx),
            progress=progress,
        )
    for k, v in weight_stats(model).items():
        setattr(ev, k, v)
    ev.seconds = time.perf_counter() - t0
    return ev


def _tokenize(model: Any, text: str, what: str) -> np.ndarray:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            f"the {what} has no tokenizer: load it from a checkpoint with a tokenizer.json or "
            "a GGUF vocabulary"
        )
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    return ids.reshape(-1)


def _windows(
    ids: np.ndarray, n_ctx: int, convention: str, bos: int | None
) -> tuple[list[np.ndarray], int]:
    """The windows to run, and the first logit position scored in each."""
    if convention == "llama.cpp":
        if len(ids) < 2 * n_ctx:
            raise ValueError(
                f"the text has {len(ids)} tokens; llama.cpp's convention needs at least "
                f"2 * n_ctx = {2 * n_ctx}: give a longer text or a smaller n_ctx"
            )
        out = []
        for k in range(len(ids) // n_ctx):
            w = ids[k * n_ctx : (k + 1) * n_ctx].copy()
            if bos is not None:
                w[0] = bos
            out.append(w)
        return out, n_ctx // 2
    if len(ids) < 2:
        raise ValueError(
            f"the text has {len(ids)} token(s); perplexity needs at least 2: give a longer text"
        )
    out = [ids[k : k + n_ctx] for k in range(0, len(ids), n_ctx)]
    if len(out[-1]) < 2:  # a single token predicts nothing
        out.pop()
    return out, 0


def _batches(windows: list[np.ndarray], batch_size: int) -> Iterable[list[np.ndarray]]:
    """Consecutive windows of the same length, ``batch_size`` at most."""
    i = 0
    while i < len(windows):
        j = i + 1
        while j < len(windows) and j - i < batch_size and len(windows[j]) == len(windows[i]):
            j += 1
        yield windows[i:j]
        i = j


def _logits(model: Any, ids: np.ndarray, what: str) -> npt.NDArray[np.float32]:
    out = np.asarray(model.logits(ids))
    if out.ndim != 3 or out.shape[:2] != ids.shape:
        raise ValueError(
            f"the {what}'s logits have shape {out.shape}, expected [batch, seq, vocab] for "
            f"ids of shape {ids.shape}"
        )
    return out.astype(_F32, copy=False)


def _evaluate_causal(
    model: Any,
    text: str,
    reference: Any,
    *,
    n_ctx: int,
    convention: str,
    max_tokens: int | None,
    batch_size: int,
    progress: bool,
) -> Evaluation:
    ids = _tokenize(model, text, "model")
    if reference is not None:
        ref_ids = _tokenize(reference, text, "reference")
        if not np.array_equal(ids, ref_ids):
            raise ValueError(
                "the model and the reference tokenize the text differently: they do not share "
                "a vocabulary (compare a model with the float model it was made from)"
            )
        v1 = getattr(getattr(model, "config", None), "vocab_size", None)
        v2 = getattr(getattr(reference, "config", None), "vocab_size", None)
        if v1 is not None and v2 is not None and v1 != v2:
            raise ValueError(
                f"the model's vocabulary has {v1} tokens, the reference's {v2}: compare models "
                "that share a vocabulary"
            )
    if max_tokens is not None:
        ids = ids[:max_tokens]
    bos = None
    tok = model.tokenizer
    if convention == "llama.cpp" and getattr(tok, "add_bos", False):
        bos = getattr(tok, "bos_id", None)
        if bos is None:
            raise ValueError("the tokenizer adds BOS but has no bos_id")
    windows, first = _windows(ids, n_ctx, convention, bos)

    nll, ref_nll, kl, top = _Moments(), _Moments(), _Moments(), _Moments()
    kl_rows = _kl_llamacpp if convention == "llama.cpp" else _kl_exact
    bar = _progress(sum(len(w) for w in windows), "tok", progress, "evaluate")
    try:
        for group in _batches(windows, batch_size):
            batch = np.stack(group)
            seq = batch.shape[1]
            last = seq - 1  # positions first .. seq-2 predict tokens first+1 .. seq-1
            logits = _logits(model, batch, "model")
            if reference is None:
                ref_logits = None
            elif reference is model:  # the same model: the same logits
                ref_logits = logits
            else:
                ref_logits = _logits(reference, batch, "reference")
            if ref_logits is not None and ref_logits.shape != logits.shape:
                raise ValueError(
                    f"the model's logits have {logits.shape[-1]} columns, the reference's "
                    f"{ref_logits.shape[-1]}: compare models that share a vocabulary"
                )
            for b in range(len(group)):
                x = logits[b, first:last]
                targets = batch[b, first + 1 :]
                nll.add(_nll(x, targets))
                if ref_logits is not None:
                    r = ref_logits[b, first:last]
                    ref_nll.add(_nll(r, targets))
                    k, same = kl_rows(x, r)
                    kl.add(k)
                    top.add(same.astype(_F64))
            del logits, ref_logits
            if bar is not None:
                bar.update(batch.size)
    finally:
        if bar is not None:
            bar.close()

    ev = Evaluation(
        model=_describe(model),
        kind="causal",
        reference=None if reference is None else _describe(reference),
        convention=convention,
        n_ctx=n_ctx,
        windows=len(windows),
        text_tokens=len(ids),
        tokens=nll.n,
    )
    ev.perplexity = math.exp(nll.mean())
    ev.perplexity_error = ev.perplexity * nll.stderr()
    if reference is not None:
        ev.reference_perplexity = math.exp(ref_nll.mean())
        ev.reference_perplexity_error = ev.reference_perplexity * ref_nll.stderr()
        ev.perplexity_ratio = math.exp(nll.mean() - ref_nll.mean())
        ev.kl_divergence = kl.mean()
        ev.kl_divergence_error = kl.stderr(min_count=10)
        p = top.mean()
        ev.top1_agreement = p
        ev.top1_agreement_error = math.sqrt(p * (1 - p) / (top.n - 1)) if top.n > 1 else 0.0
    if convention == "windows" and len(windows) > 1 and len(windows[-1]) < n_ctx:
        ev.notes.append(f"the last window holds the remaining {len(windows[-1])} tokens")
    return ev


def _texts(text: str | list[str]) -> list[str]:
    if isinstance(text, str):
        return [line.strip() for line in text.splitlines() if line.strip()]
    return list(text)


def _evaluate_encoder(
    model: Any, text: str | list[str], reference: Any, batch_size: int, progress: bool
) -> Evaluation:
    if reference is None:
        raise ValueError(
            "an encoder is measured against a reference: pass reference= (e.g. the float "
            "model), whose embeddings the cosine compares with"
        )
    texts = _texts(text)
    if not texts:
        raise ValueError("the text has no non-empty line to embed: give some text")
    rows: list[np.ndarray] = []
    bar = _progress(len(texts), "text", progress, "evaluate")
    try:
        for lo in range(0, len(texts), batch_size):
            part = texts[lo : lo + batch_size]
            a = np.asarray(model.embed(part), dtype=_F64)
            b = np.asarray(reference.embed(part), dtype=_F64)
            if a.shape != b.shape or a.ndim != 2 or len(a) != len(part):
                raise ValueError(
                    f"the model's embeddings have shape {a.shape}, the reference's {b.shape}: "
                    "compare models with the same embedding width"
                )
            na = np.linalg.norm(a, axis=1)
            nb = np.linalg.norm(b, axis=1)
            den = na * nb
            cos = np.divide(np.einsum("ij,ij->i", a, b), den, out=np.zeros(len(a)), where=den > 0)
            rows.append(cos)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    cos = np.concatenate(rows)
    return Evaluation(
        model=_describe(model),
        kind="encoder",
        reference=_describe(reference),
        tokens=len(texts),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
    )

"""``qfast.quantize_model``: a whole model quantized block by block, in bounded memory.

Methods that learn from data (GPTQ, AWQ) run **block-sequentially**: the calibration data
enters block 0 as hidden states, and each block is calibrated on the outputs of the blocks
already quantized. Within a block they are **true-sequential** with one forward pass: the block
runs as stages between its linear groups (``Model.block_groups``: q/k/v, then o, then
gate/up, then down for a Llama), and each group is quantized on its input over the whole
calibration set before the next stage computes, with the group's quantized (dequantized)
weights, the input of the next group. Linears that read one input share one Hessian (GPTQ) or
one scale search (AWQ). AWQ's scales fold into the operation that produces the group's input
(a norm's weight, or the rows of the previous linear, quantized already: its scales are
rescaled exactly), and the calibration input is rescaled with them.

RTN, HQQ and W8A8 read only the weights: each block's linears are quantized as they stream
from the checkpoint.

**Memory.** Weights are read one block at a time from the checkpoint's memory map; when a
block is done its tensors are dropped and their pages given back (``madvise(MADV_DONTNEED)``,
see ``WeightStore.release``). With ``output=``, each block's shard is written as soon as the
block is done (qfast's format, ``qfast.model.writer``: one safetensors file per block plus an
index, in a temporary folder renamed into place at the end) and its QTensors leave memory too;
the model returned reads them back lazily. What stays is the calibration state: the hidden
states of every calibration token, one group's input, and the Hessians.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..tensor.qtensor import QTensor
from .base import CalibrationBatch, LinearGroup, Model, WeightStore
from .recipe import LayerSpec, Recipe

__all__ = ["QuantizeReport", "hf_layout", "quantize_model"]

#: Calibration tokens per batch of a stage (sequences are grouped up to this many tokens).
BATCH_TOKENS = 4096
#: AWQ's scale search measures its loss on at most this many calibration tokens, evenly
#: spread over the set (its statistics, x_mean, come from the same rows). AutoAWQ uses all
#: 65,536 on a GPU; on a CPU the 20-point search over every token costs ~16x more than GPTQ.
AWQ_TOKENS = 4096
_QK = ("q_proj", "k_proj", "query", "key")

Progress = Callable[[int, int, str], Any]


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` did and what it cost.

    Attributes:
        recipe: the recipe.
        seconds: wall time by phase: ``calibration`` (tokenizing and embedding the data),
            ``forward`` (the block stages), ``hessian``, ``quantize`` (the algorithms, with
            reading the weights), ``write``, and ``total``.
        layers: per quantized linear (module name): ``bits``, ``group_size``, ``params``,
            and the method's ``loss`` where it reports one.
        calibration_tokens: tokens the calibrated methods learned from (0 for the others).
        quantized_params / float_params: weights of the quantized linears, and of every
            other tensor.
        quantized_bytes: the quantized linears' bytes (codes, scales, zero points, g_idx).
        peak_rss: the process's peak resident memory at the end, bytes (``ru_maxrss``).
        output: the folder written, if any.
        output_bytes: the size of its tensor files.
    """

    recipe: Recipe
    seconds: dict[str, float] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration_tokens: int = 0
    quantized_params: int = 0
    float_params: int = 0
    quantized_bytes: int = 0
    peak_rss: int = 0
    output: Path | None = None
    output_bytes: int = 0

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight of the quantized linears (scales and zero points included)."""
        return 8 * self.quantized_bytes / self.quantized_params if self.quantized_params else 0.0

    def table(self) -> str:
        """The time split, sizes and memory as a small text table."""
        s = self.seconds
        lines = [
            f"recipe       {self.recipe.describe()}",
            f"quantized    {len(self.layers)} linears, {self.quantized_params:,} weights at "
            f"{self.bits_per_weight:.3f} bits/weight ({_fmt_bytes(self.quantized_bytes)}); "
            f"{self.float_params:,} weights kept in float",
        ]
        if self.calibration_tokens:
            lines.append(f"calibration  {self.calibration_tokens:,} tokens")
        parts = ", ".join(
            f"{k} {s[k]:.1f} s"
            for k in ("calibration", "forward", "hessian", "quantize", "write")
            if s.get(k)
        )
        lines.append(f"time         {s.get('total', 0.0):.1f} s ({parts})")
        lines.append(f"peak memory  {_fmt_bytes(self.peak_rss)} (RSS)")
        if self.output is not None:
            lines.append(f"written      {self.output} ({_fmt_bytes(self.output_bytes)} of tensors)")
        return "\n".join(lines)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def peak_rss() -> int:
    """The process's peak resident set size in bytes: Linux's VmHWM (``ru_maxrss`` of a
    forked child starts from its parent's peak), else ``ru_maxrss``."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# -- models in Hugging Face's Q/K layout ----------------------------------------------------


def hf_layout(model: Model) -> Model:
    """``model`` with its Q / K rows in Hugging Face's layout: the model itself, or, for a
    Llama read from a GGUF file (``qk_layout="gguf"``), a Llama over the same weights whose
    q / k weights and biases are un-permuted as they are read (quantizing rows in either
    order gives the same codes; written files follow Hugging Face)."""
    if getattr(model, "qk_layout", "hf") != "gguf":
        return model
    from .arch.llama import Llama, unpermute_qk

    src = model.weights
    c = model.config
    heads = {"self_attn.q_proj": c.num_attention_heads, "self_attn.k_proj": c.num_key_value_heads}

    def rows(name: str) -> int | None:
        for key, n in heads.items():
            if name.endswith((key + ".weight", key + ".bias")):
                return n
        return None

    def load(name: str) -> Any:
        w = src[name]
        n = rows(name)
        if n is None:
            return w
        if isinstance(w, QTensor):
            raise ValueError(
                f"{name} is a QTensor in llama.cpp's Q/K row order; quantize the model after "
                "loading it (qfast.quantize_model converts the layout first)"
            )
        a = np.asarray(w)
        return unpermute_qk(a.reshape(a.shape[0], -1), n).reshape(a.shape)

    store = WeightStore(
        {n: src.shape(n) for n in src},
        load,
        dtypes={n: src.stored_dtype(n) for n in src},
        evict=lambda name: src.release([name]),
    )
    out = Llama(c, store, model.tokenizer, source=model.source, compute=model.compute)
    out.recipe = model.recipe
    return out


# -- calibration data ------------------------------------------------------------------------


def _as_recipe(recipe: Any) -> Recipe:
    if recipe is None:
        return Recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, str):
        return Recipe(recipe)
    raise TypeError(
        f"recipe must be a qfast.Recipe, a dict of its fields, or a method name, not "
        f"{type(recipe).__name__}"
    )


def _causal_windows(model: Model, calibration: Any, samples: int, seq_len: int) -> np.ndarray:
    """Token windows ``[samples, seq_len]`` for a causal LM: consecutive windows of the
    tokenized text (each starting with BOS when the tokenizer adds one), or ids as given."""
    if isinstance(calibration, np.ndarray) and np.issubdtype(calibration.dtype, np.integer):
        ids = calibration
        if ids.ndim == 2:
            return ids.astype(np.int64)
        if ids.ndim != 1:
            raise ValueError(f"calibration ids must be [samples, seq] or 1-D, got {ids.shape}")
        text_ids = ids.astype(np.int64)
        bos = None
    else:
        if calibration is None:
            from ..calibration.text import calibration_paragraphs, split_sizes

            calibration = calibration_paragraphs(split_sizes()[0])
        if isinstance(calibration, str):
            text = calibration
        elif isinstance(calibration, (list, tuple)) and all(
            isinstance(t, str) for t in calibration
        ):
            text = "\n\n".join(calibration)
        else:
            raise TypeError(
                "calibration must be text (a str or a list of str) or token ids (an integer "
                f"array), not {type(calibration).__name__}"
            )
        tok = model.tokenizer
        if tok is None:
            raise ValueError(
                "the model has no tokenizer, so calibration text cannot be tokenized; pass "
                "token ids (an integer array [samples, seq_len])"
            )
        text_ids = np.asarray(tok.encode(text, add_special=False), dtype=np.int64)
        bos = tok.bos_id if getattr(tok, "add_bos", False) else None
    step = seq_len - (1 if bos is not None else 0)
    have = len(text_ids) // step if step > 0 else 0
    if have < samples:
        raise ValueError(
            f"the calibration data has {len(text_ids):,} tokens: {have} windows of {seq_len}, "
            f"fewer than the {samples} asked for; pass more text, or fewer --samples / a "
            "shorter --seq-len"
        )
    windows = text_ids[: samples * step].reshape(samples, step)
    if bos is not None:
        windows = np.concatenate([np.full((samples, 1), bos, np.int64), windows], axis=1)
    return windows


def _batches(model: Model, calibration: Any, samples: int, seq_len: int) -> list[Any]:
    """The calibration inputs, batched for the stages (about BATCH_TOKENS tokens each)."""
    if model.kind == "causal":
        windows = _causal_windows(model, calibration, samples, seq_len)
        per = max(1, BATCH_TOKENS // windows.shape[1])
        return [windows[i : i + per] for i in range(0, len(windows), per)]
    texts = calibration
    if texts is None:
        from ..calibration.text import calibration_paragraphs

        texts = calibration_paragraphs(samples)
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError("an encoder's calibration data is a list of texts")
    max_len = min(seq_len, getattr(model, "max_seq_length", seq_len))
    return model.text_batches(list(texts), max_len, max(1, BATCH_TOKENS // max_len))  # type: ignore[attr-defined]


class _Acts:
    """One group's input over the calibration set: per batch a ``[batch, seq, width]`` view
    of one array, whose real rows are the group's calibration rows."""

    def __init__(self, states: list[CalibrationBatch]) -> None:
        self.states = states
        self.big: np.ndarray | None = None
        self.views: list[np.ndarray] = []

    def put(self, b: int, out: np.ndarray) -> None:
        if self.big is None:
            total = sum(st.h.shape[0] * st.h.shape[1] for st in self.states)
            self.big = np.empty((total, out.shape[-1]), np.float32)
            offset = 0
            for st in self.states:
                n = st.h.shape[0] * st.h.shape[1]
                self.views.append(
                    self.big[offset : offset + n].reshape(st.h.shape[0], st.h.shape[1], -1)
                )
                offset += n
        self.views[b][...] = out.reshape(self.views[b].shape)

    def rows(self) -> np.ndarray:
        """The real rows ``[tokens, width]`` (a view when nothing is padding)."""
        assert self.big is not None
        if all(st.real is None for st in self.states):
            return self.big
        return np.concatenate(
            [
                v.reshape(-1, v.shape[-1])[
                    np.ones(v.shape[0] * v.shape[1], bool) if st.real is None else st.real.ravel()
                ]
                for v, st in zip(self.views, self.states)
            ]
        )

    def scale(self, inv: np.ndarray) -> None:
        """Divides every row by ``inv`` (AWQ's folded scales)."""
        assert self.big is not None
        self.big /= inv


# -- the driver ------------------------------------------------------------------------------


class _Run:
    """One quantize_model call's state."""

    def __init__(self, model: Model, recipe: Recipe, report: QuantizeReport) -> None:
        self.model = model
        self.recipe = recipe
        self.report = report
        self.plan = {m: recipe.resolve(m) for m in model.linear_names()}
        self.qtensors: dict[str, QTensor] = {}

    @contextlib.contextmanager
    def timed(self, phase: str) -> Any:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            s = self.report.seconds
            s[phase] = s.get(phase, 0.0) + time.perf_counter() - t0

    def weight(self, module: str) -> np.ndarray:
        w = self.model.weights[module + ".weight"]
        if isinstance(w, QTensor):
            raise ValueError(
                f"{module} is quantized already (a QTensor); quantize_model starts from a float "
                "checkpoint"
            )
        return np.asarray(w, dtype=np.float32)

    def record(self, module: str, qt: QTensor, spec: LayerSpec) -> None:
        self.qtensors[module] = qt
        info: dict[str, Any] = {
            "bits": spec.bits,
            "group_size": spec.group_size,
            "params": int(np.prod(qt.shape)),
        }
        if qt.loss is not None:
            info["loss"] = qt.loss
        self.report.layers[module] = info

    # -- quantizers that read only the weights --

    def quantize_plain(self, module: str, spec: LayerSpec) -> QTensor:
        from ..algorithms.hqq import hqq
        from ..algorithms.rtn import rtn
        from ..tensor.quantize import quantize

        W = self.weight(module)
        if spec.method == "w8a8":
            return quantize(
                W, spec.bits, symmetric=spec.symmetric, axis=0, scale_dtype=spec.scale_dtype
            )
        if spec.method == "hqq":
            return hqq(W, spec.bits, spec.group_size)
        return rtn(
            W,
            spec.bits,
            spec.group_size,
            spec.symmetric,
            mse=spec.mse,
            scale_dtype=spec.scale_dtype,
        )

    def quantize_plain_group(self, group: LinearGroup) -> None:
        """Quantizes a group's linears that the recipe selects, each from its weight alone."""
        for m in group.names:
            spec = self.plan[m]
            if spec is not None:
                with self.timed("quantize"):
                    qt = self.quantize_plain(m, spec)
                self.record(m, qt, spec)

    # -- a calibrated group --

    def quantize_group(self, group: LinearGroup, acts: _Acts) -> None:
        """Quantizes one group on its input ``acts``; sets the dequantized weights for the
        stages that follow (and, for AWQ, folds the scales and rescales ``acts``)."""
        members = [(m, spec) for m in group.names if (spec := self.plan[m]) is not None]
        if not members:
            return
        # The forward pass's scratch (a batch's q / k / v, attention, MLP arrays: for SmolLM2
        # 125 MB at 4096 tokens) is not needed while the group is quantized.
        self.model.free_scratch()
        rows = acts.rows()
        if self.recipe.method == "gptq":
            from ..algorithms.gptq import gptq
            from ..calibration.hessian import Hessian

            with self.timed("hessian"):
                H = Hessian(rows.shape[1]).add(rows)
            for m, spec in members:
                with self.timed("quantize"):
                    qt = gptq(
                        self.weight(m),
                        hessian=H,
                        bits=spec.bits,
                        group_size=spec.group_size,
                        symmetric=spec.symmetric,
                        act_order=spec.act_order,
                        static_groups=spec.static_groups,
                        damp=spec.damp,
                        mse=spec.mse,
                        scale_dtype=spec.scale_dtype,
                    )
                self.set_quantized(m, qt, spec)
            return
        self.awq_group(group, members, rows, acts)

    def awq_group(
        self,
        group: LinearGroup,
        members: list[tuple[str, LayerSpec]],
        rows: np.ndarray,
        acts: _Acts,
    ) -> None:
        from ..algorithms.awq import awq

        spec = members[0][1]
        step = max(1, rows.shape[0] // AWQ_TOKENS)
        x = rows[::step]
        weights = [self.weight(m) for m, _ in members]
        fold = group.fold
        with self.timed("quantize"):
            if fold is None:  # nothing can absorb scales: AWQ's clip search alone
                res = awq(weights, x, spec.bits, spec.group_size, spec.symmetric,
                          search_scales=False, clip=False,
                          scale_dtype=spec.scale_dtype)  # fmt: skip
            else:
                res = awq(weights, x, spec.bits, spec.group_size, spec.symmetric, clip=False,
                          scale_dtype=spec.scale_dtype)  # fmt: skip
            scales = res.scales
            xs = np.ascontiguousarray(x / scales)
            qts = []
            for (m, s), w, q in zip(members, weights, res.qweights):
                if m.rsplit(".", 1)[-1] in _QK:  # AutoAWQ does not clip q / k
                    qts.append(q)
                    continue
                one = awq(w * scales, xs, s.bits, s.group_size, s.symmetric,
                          search_scales=False, scale_dtype=s.scale_dtype)  # fmt: skip
                qts.append(one.qweights[0])
        if fold is not None and not np.all(scales == 1):
            self.fold(fold, scales)
            acts.scale(scales)
            # float members of the group (kept by an override) read the rescaled input too
            for m in group.names:
                if self.plan[m] is None:
                    self.model.weights[m + ".weight"] = self.weight(m) * scales
        for (m, s), qt in zip(members, qts):
            qt.meta["awq_ratio"] = res.ratio
            self.set_quantized(m, qt, s)

    def fold(self, target: str, scales: np.ndarray) -> None:
        """Divides the output of ``target`` (a norm's weight, or a linear's rows) by
        ``scales``."""
        w = self.model.weights
        if target in self.plan:  # a linear: its rows, its bias
            name = target + ".weight"
            if target in self.qtensors:
                qt = _scale_rows(self.qtensors[target], 1 / scales)
                self.qtensors[target] = qt
                w[name] = qt.dequantize(np.float32)
            else:
                w[name] = self.weight(target) / scales[:, None]
            bias = target + ".bias"
            if bias in w:
                w[bias] = np.asarray(w[bias], np.float32) / scales
            return
        w[target] = np.asarray(w[target], np.float32) / scales

    def set_quantized(self, module: str, qt: QTensor, spec: LayerSpec) -> None:
        """Records ``qt`` and gives the forward pass its dequantized values."""
        self.record(module, qt, spec)
        self.model.weights[module + ".weight"] = qt.dequantize(np.float32)


def _scale_rows(qt: QTensor, factor: np.ndarray) -> QTensor:
    """``qt`` with row ``r`` multiplied by ``factor[r]`` (its scales rescaled)."""
    scale = np.asarray(qt.scale)
    if scale.ndim != len(qt.shape) or scale.shape[0] != qt.shape[0]:
        raise ValueError("only a QTensor with per-row scales can have its rows rescaled")
    f = factor.astype(np.float32).reshape(-1, *([1] * (scale.ndim - 1)))
    new = (scale.astype(np.float32) * f).astype(scale.dtype)
    return QTensor(
        qt.data,
        qt.shape,
        qt.bits,
        qt.signed,
        new,
        qt.zero_point,
        axis=qt.axis,
        group_size=qt.group_size,
        g_idx=qt.g_idx,
        meta=qt.meta,
    )


def quantize_model(
    model: Model,
    recipe: Recipe | dict[str, Any] | str | None = None,
    calibration: Any = None,
    *,
    samples: int = 128,
    seq_len: int = 512,
    output: str | os.PathLike[str] | None = None,
    format: str = "qfast",
    checkpoint_format: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Model:
    """Quantizes ``model``'s linears with ``recipe`` (see the module's docstring).

    Args:
        model: a float model from :func:`qfast.load_model` (a Llama-family causal LM, or a
            BERT encoder).
        recipe: a :class:`qfast.Recipe`, a dict of its fields, or a method name (``"gptq"``);
            default ``Recipe()`` (GPTQ, 4-bit, group 128, symmetric).
        calibration: for gptq / awq: text (a str, or a list of paragraphs), tokenized with the
            model's tokenizer and cut into ``samples`` consecutive windows of ``seq_len``
            tokens (each starting with BOS where the tokenizer adds one); or token ids, an
            integer array ``[samples, seq_len]`` used as they are. An encoder takes a list of
            texts (each one sequence, truncated to ``seq_len``). Default: the calibration side
            of the Wikipedia sample (``qfast.calibration.calibration_paragraphs``), whose
            articles are disjoint from ``heldout_paragraphs``'. Ignored by rtn / hqq / w8a8.
        samples, seq_len: how much calibration data (default 128 x 512 tokens).
        output: a folder to write the quantized model to, block by block (bounded memory:
            each block's QTensors leave memory once written). The returned model then reads
            from it.
        format: ``output``'s format: ``"qfast"`` (default), ``"gptq"``, ``"awq"`` or
            ``"compressed-tensors"`` (see :meth:`Model.save`). A recipe the format cannot
            hold is refused before any work.
        checkpoint_format: GPTQ's ``"gptq"`` (v1) or ``"gptq_v2"`` (see :meth:`Model.save`).
        overwrite: replace an existing ``output``.
        progress: called as ``progress(done, total, description)`` at the start and after
            each block (``total``: the blocks, plus one for the head and the rest).

    Returns:
        The quantized model: linears are QTensors run through ``qfast.linear`` with the
        recipe's ``compute`` (``"float"`` for the weight-only methods, ``"int8"`` for w8a8);
        ``model.recipe`` is the recipe and ``model.quantize_report`` a
        :class:`QuantizeReport`. Without ``output`` the QTensors are assigned in the model's
        weights (for a GGUF Llama, a new model object in Hugging Face's Q/K layout).

    Raises:
        ValueError: a recipe the model's shapes cannot take (AWQ / HQQ groups must divide
            the input width), too little calibration data, a model that is quantized already.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    t_start = time.perf_counter()
    if not isinstance(model, Model):
        raise TypeError(f"quantize_model takes a qfast Model (load_model), not {type(model)!r}")
    if type(model).block_stage is Model.block_stage:  # the stage protocol is optional
        raise TypeError(
            f"quantize_model runs architectures that run in blocks (the Llama family, BERT); "
            f"{type(model).__name__} ({model.arch!r}) does not implement the stage protocol "
            "(Model.block_groups / calibration_batch / block_stage)"
        )
    recipe = _as_recipe(recipe)
    for name, value in (("samples", samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    model = hf_layout(model)
    report = QuantizeReport(recipe)
    run = _Run(model, recipe, report)
    _check_plan(model, run.plan, recipe)
    options = {} if checkpoint_format is None else {"checkpoint_format": checkpoint_format}
    if output is not None:
        from .layouts import check_plan

        check_plan(format, run.plan, model.weights.shape, **options)
    elif format != "qfast" or options:
        raise ValueError("format= and checkpoint_format= describe output=: pass output too")
    blocks = model.num_blocks
    total = blocks + 1
    inputs: list[Any] = []
    if recipe.calibrated:  # bad calibration data fails before anything is written
        with run.timed("calibration"):
            inputs = _batches(model, calibration, samples, seq_len)
    writer = None
    if output is not None:
        from .writer import ModelWriter

        writer = ModelWriter(
            output,
            model,
            recipe,
            n_shards=blocks + 1,
            overwrite=overwrite,
            format=format,
            **options,
        )
    if progress is not None:
        progress(0, total, recipe.describe())
    with writer if writer is not None else contextlib.nullcontext():
        states: list[CalibrationBatch] = []
        if recipe.calibrated:
            with run.timed("calibration"):
                states = [model.calibration_batch(b) for b in inputs]
                inputs.clear()
                report.calibration_tokens = sum(
                    int(st.h.shape[0] * st.h.shape[1] if st.real is None else st.real.sum())
                    for st in states
                )
            # The embedding table read to embed the data (a float32 copy, for a float16 or
            # GGUF checkpoint) is not needed again before the last shard: give it back now.
            in_blocks = tuple(model.block_prefix(i) for i in range(blocks))
            model.weights.release([n for n in model.weights if not n.startswith(in_blocks)])
        done: set[str] = set()
        for i in range(blocks):
            prefix = model.block_prefix(i)
            names = [n for n in model.weights if n.startswith(prefix)]
            if recipe.calibrated:
                _calibrate_block(run, i, states)
            else:
                for group in model.block_groups(i):
                    run.quantize_plain_group(group)
            _finish_block(run, names, writer)
            done.update(names)
            if progress is not None:
                progress(i + 1, total, f"block {i + 1}/{blocks}")
        rest = [n for n in model.weights if n not in done]
        head = model.head_group()
        if head is not None and any(run.plan.get(m) is not None for m in head.names):
            if recipe.calibrated:
                acts = _Acts(states)
                with run.timed("forward"):
                    for b, st in enumerate(states):
                        acts.put(b, model.head_input(st.h, st.ctx))
                run.quantize_group(head, acts)
            else:
                run.quantize_plain_group(head)
        states.clear()
        _finish_block(run, rest, writer)
        if progress is not None:
            progress(total, total, "done")
        if writer is not None:
            with run.timed("write"):
                path = writer.finish()
    report.seconds["total"] = time.perf_counter() - t_start
    report.peak_rss = peak_rss()
    if writer is not None:
        from .checkpoint import load_model

        out = load_model(path, compute=recipe.compute)
        report.output = path
        report.output_bytes = writer.total_bytes
    else:
        out = model
        out.compute = recipe.compute
    out.recipe = recipe
    out.quantize_report = report
    return out


def _check_plan(model: Model, plan: dict[str, LayerSpec | None], recipe: Recipe) -> None:
    bad = []
    for m, spec in plan.items():
        if spec is None:
            continue
        if model.weights.stored_dtype(m + ".weight") == "qtensor":
            raise ValueError(
                f"{m} is quantized already; quantize_model starts from a float checkpoint"
            )
        cols = model.weights.shape(m + ".weight")[1]
        if spec.method in ("awq", "hqq") and spec.group_size is not None and cols % spec.group_size:
            bad.append(f"{m} ({cols} inputs)")
    if bad:
        raise ValueError(
            f"{recipe.method} needs group_size {recipe.group_size} to divide every quantized "
            f"linear's input width, and it does not for {len(bad)}: {', '.join(bad[:4])}; pick "
            "a group size that divides them, or an override for those modules"
        )
    if recipe.method == "awq":
        for i in range(model.num_blocks):
            for group in model.block_groups(i):
                specs = {s for m in group.names if (s := plan[m]) is not None}
                if len({(s.bits, s.group_size, s.symmetric) for s in specs}) > 1:
                    raise ValueError(
                        f"AWQ searches one set of scales for {', '.join(group.names)}: "
                        "overrides must give them the same bits, group_size and symmetric"
                    )


def _calibrate_block(run: _Run, i: int, states: list[CalibrationBatch]) -> None:
    model = run.model
    groups = model.block_groups(i)
    acts: _Acts | None = None
    for k in range(len(groups) + 1):
        nxt = _Acts(states)
        with run.timed("forward"):
            for b, st in enumerate(states):
                out = model.block_stage(i, k, st.h, None if acts is None else acts.views[b], st.ctx)
                if out is not None:
                    nxt.put(b, out)
        acts = nxt if nxt.big is not None else None
        if k < len(groups):
            assert acts is not None
            run.quantize_group(groups[k], acts)


def _finish_block(run: _Run, names: list[str], writer: Any) -> None:
    """Writes (or keeps) a block's tensors, then drops what it read."""
    model = run.model
    weights = model.weights
    linears = {n[: -len(".weight")] for n in names if n.endswith(".weight")}
    quantized = {m: qt for m, qt in run.qtensors.items() if m in linears}
    for qt in quantized.values():
        run.report.quantized_params += int(np.prod(qt.shape))
        run.report.quantized_bytes += qt.nbytes
    for n in names:
        if n[: -len(".weight")] not in quantized or not n.endswith(".weight"):
            run.report.float_params += int(np.prod(weights.shape(n)))
    if writer is not None:
        from .writer import stored_float

        with run.timed("write"):
            out: dict[str, Any] = {}
            for n in names:
                module = n[: -len(".weight")] if n.endswith(".weight") else None
                if module is not None and module in quantized:
                    out[n] = quantized[module]
                else:
                    out[n] = stored_float(model, n, np.asarray(weights[n], np.float32))
            writer.write_shard(out)
        for m in quantized:
            del run.qtensors[m]
        weights.reset(names)
        return
    for m, qt in quantized.items():
        weights[m + ".weight"] = qt
        del run.qtensors[m]
    weights.release(names)

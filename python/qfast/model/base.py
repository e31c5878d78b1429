"""What every model has: lazily loaded weights, a tokenizer, and pluggable linears.

The contract the architectures (``qfast.model.arch``), the checkpoint readers
(``qfast.model.checkpoint``) and the evaluation (``qfast.model.evaluate``) share:

- Weights are named as in the Hugging Face checkpoint of the architecture
  (``model.layers.0.self_attn.q_proj.weight``), whatever file they came from; a GGUF reader
  maps llama.cpp's names onto these. Linear weights are ``[out, in]``.
- :class:`WeightStore` is a mutable mapping name -> float32 ndarray or :class:`qfast.QTensor`.
  Reading a name loads it from its source (memory-mapped; converted to float32 when the file
  holds float16 / bfloat16 / GGUF blocks); assigning a name replaces it (a QTensor or an array
  of the same shape), which is how a quantized model is built by hand::

      for layer in model.linear_names():  # module names: "model.layers.0.self_attn.q_proj"
          name = f"{layer}.weight"
          model.weights[name] = qfast.rtn(model.weights[name], bits=4, group_size=64)

- A linear whose weight is a QTensor runs ``qfast.linear`` with the model's ``compute``
  (``"int8"`` or ``"float"``); a float weight runs ``x @ W.T``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from ..tensor.qtensor import QTensor

F32 = npt.NDArray[np.float32]
Weight = Union[F32, QTensor]
#: A capture hook: called with a linear's name and its input rows, float32 ``[tokens, in]``.
Capture = Callable[[str, F32], None]

__all__ = [
    "F32",
    "CalibrationBatch",
    "Capture",
    "LinearGroup",
    "Model",
    "Weight",
    "WeightStore",
]


class WeightStore(MutableMapping[str, Weight]):
    """Name -> weight, read lazily from a checkpoint, with replacements layered on top.

    Args:
        shapes: every tensor's logical shape, by name (known without reading any data).
        load: reads one tensor as float32 (or a QTensor, for quantized checkpoints).
        dtypes: the dtype each tensor is stored in (``"float16"``, ``"Q4_1"``, ...), for
            reports; default: float32.
        cache: keep tensors once read (the forward pass reads each weight on every call, so a
            float16 checkpoint is converted only once); :meth:`release` drops them.
        evict: called with a tensor's name when :meth:`release` drops it, to give the pages
            of its source back (a memory map's pages count in the process's RSS once read).
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        load: Callable[[str], Weight],
        *,
        dtypes: dict[str, str] | None = None,
        cache: bool = True,
        evict: Callable[[str], None] | None = None,
    ) -> None:
        self._shapes = dict(shapes)
        self._evict = evict
        self._load = load
        self._source_dtypes = dict(dtypes or {})
        self._dtypes = dict(self._source_dtypes)
        self._cache = cache
        self._held: dict[str, Weight] = {}
        self._replaced: set[str] = set()

    def __getitem__(self, name: str) -> Weight:
        held = self._held.get(name)
        if held is not None:
            return held
        if name not in self._shapes:
            raise KeyError(f"{name!r} is not a tensor of this model ({len(self)} tensors)")
        value = self._load(name)
        if self._cache:
            self._held[name] = value
        return value

    def __setitem__(self, name: str, value: Weight) -> None:
        if name not in self._shapes:
            raise KeyError(
                f"{name!r} is not a tensor of this model: only existing names take a replacement"
            )
        if isinstance(value, QTensor):
            shape = tuple(value.shape)
        else:
            value = np.asarray(value, dtype=np.float32)
            shape = value.shape
        if shape != self._shapes[name]:
            raise ValueError(
                f"{name!r}: the replacement has shape {shape}, the model's tensor "
                f"is {self._shapes[name]}"
            )
        self._held[name] = value
        self._replaced.add(name)
        self._dtypes[name] = _dtype_name(value)

    def __delitem__(self, name: str) -> None:
        raise TypeError("a model's tensors cannot be deleted; assign a replacement instead")

    def __contains__(self, name: object) -> bool:
        # Mapping's default reads the tensor (self[name]); a name check must not load it.
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's logical shape, without reading it."""
        return self._shapes[name]

    def stored_dtype(self, name: str) -> str:
        """What a tensor is stored as: a NumPy dtype name, a GGUF type, or ``"qtensor"``."""
        return self._dtypes.get(name, "float32")

    def release(self, names: Any = None) -> None:
        """Drop cached tensors read from the checkpoint (all, or those named), and give their
        source's pages back; replacements assigned by the user are kept."""
        for name in list(self._shapes) if names is None else list(names):
            if name in self._held and name not in self._replaced:
                del self._held[name]
            if self._evict is not None and name in self._shapes:
                self._evict(name)

    def reset(self, names: Any) -> None:
        """Drop the replacements of ``names`` (and anything cached): they read from the
        checkpoint again."""
        for name in list(names):
            self._held.pop(name, None)
            self._replaced.discard(name)
            if name in self._source_dtypes:
                self._dtypes[name] = self._source_dtypes[name]
            else:
                self._dtypes.pop(name, None)
        self.release(names)

    def source_dtype(self, name: str) -> str:
        """The dtype a tensor has in the checkpoint, whatever replaced it since."""
        return self._source_dtypes.get(name, "float32")

    def replaced(self) -> list[str]:
        """The names assigned a replacement (e.g. the quantized linears), in store order."""
        return [n for n in self._shapes if n in self._replaced]


def _dtype_name(value: Weight) -> str:
    return "qtensor" if isinstance(value, QTensor) else str(np.asarray(value).dtype)


@dataclass(frozen=True)
class LinearGroup:
    """Linears of a block that read the same input, quantized together: GPTQ builds one
    Hessian for them, AWQ searches one set of input scales.

    Attributes:
        names: the linears' module names, in execution order.
        fold: where AWQ's input scales fold (the operation producing the input divides its
            output by them): a norm's weight (a tensor name), a linear (a module name: its
            output rows and bias), or ``None`` when nothing can absorb them exactly (AWQ then
            only clips).
    """

    names: tuple[str, ...]
    fold: str | None = None


@dataclass
class CalibrationBatch:
    """One batch of calibration data as it flows through the blocks.

    Attributes:
        h: the hidden states entering the next block, float32 ``[batch, seq, hidden]``.
        real: bool ``[batch, seq]``, the positions that are tokens (not padding); ``None``:
            all of them.
        ctx: what the architecture's stages need besides (e.g. an attention mask).
    """

    h: F32
    real: np.ndarray | None = None
    ctx: Any = None


class Model(ABC):
    """A loaded model: its architecture's forward pass over a :class:`WeightStore`.

    Attributes:
        arch: the architecture's name (``"llama"``, ``"bert"``).
        config: the architecture's hyperparameters (a dataclass of the ``arch`` module).
        weights: the tensors, by Hugging Face name.
        tokenizer: text -> ids (``None`` when the checkpoint has none).
        source: the file or folder the model was loaded from, if any.
        compute: how linears with QTensor weights run: ``"int8"`` or ``"float"``.
    """

    arch: str = ""
    #: ``"causal"`` (next-token logits) or ``"encoder"`` (embeddings).
    kind: str = ""

    def __init__(
        self,
        config: Any,
        weights: WeightStore,
        tokenizer: Any = None,
        *,
        source: str | Path | None = None,
        compute: str = "int8",
    ) -> None:
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.source = None if source is None else Path(source)
        self.compute = compute

    #: The recipe a quantized checkpoint was made with (``qfast.Recipe``), else None.
    recipe: Any = None
    #: What ``qfast.quantize_model`` did and what it cost (a ``QuantizeReport``), on the
    #: model it returns; None otherwise.
    quantize_report: Any = None

    @abstractmethod
    def linear_names(self) -> list[str]:
        """Every linear layer's module name (its weight is ``f"{name}.weight"``), block by
        block, in execution order: the names `capture` hooks receive."""

    def save(
        self,
        path: str | Path,
        *,
        format: str = "qfast",
        overwrite: bool = False,
        checkpoint_format: str | None = None,
        type: str | None = None,
        imatrix: Any = None,
    ) -> Path:
        """Writes the model (float, or with QTensor linears) to the folder ``path``, block by
        block and atomically; ``qfast.load_model(path)`` reads it back exactly.

        Args:
            path: the folder to create (for ``"gguf"``: the file).
            format: ``"qfast"`` (default; any QTensor), or a checkpoint transformers and vLLM
                load: ``"gptq"``, ``"awq"`` (GEMM) or ``"compressed-tensors"``
                (``pack-quantized``). See ``qfast.model.writer``. ``"gguf"``: one GGUF file
                llama.cpp loads (a Llama; see ``qfast.model.gguf_source``).
            overwrite: replace an existing folder.
            checkpoint_format: GPTQ only: ``"gptq"`` (v1: zero points stored minus 1) or
                ``"gptq_v2"``; default v1, or v2 with a warning when a zero point of 0 needs it.
            type: GGUF only: ``"F32"``, ``"F16"``, ``"BF16"`` (``convert_hf_to_gguf.py
                --outtype``) or a llama.cpp mix (``"Q4_K_M"``, ...: ``llama-quantize``'s bytes).
            imatrix: GGUF only: an importance matrix for the mix (``llama-quantize --imatrix``).

        Raises:
            ValueError: a quantized linear the format cannot hold (the message names it and
                says what to do); nothing is written then.
        """
        from .writer import save_model

        if format == "gguf":
            if checkpoint_format is not None:
                raise ValueError("checkpoint_format= is for format='gptq', not 'gguf'")
            from .gguf_source import save_gguf

            return save_gguf(self, path, type=type, imatrix=imatrix, overwrite=overwrite)
        if type is not None or imatrix is not None:
            raise ValueError(f"type= and imatrix= are for format='gguf', not {format!r}")

        options = {} if checkpoint_format is None else {"checkpoint_format": checkpoint_format}
        return save_model(self, path, format=format, overwrite=overwrite, **options)

    def linear(self, x: F32, name: str, bias: str | None = None) -> F32:
        """``x @ W.T (+ b)`` over the last axis of ``x``, with the weight ``name``."""
        from ..tensor.linear import linear

        w = self.weights[name]
        b = None if bias is None else self.weights[bias]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if isinstance(w, QTensor):
            y = linear(x2, w, b, compute=self.compute)
        else:
            y = x2 @ w.T
            if b is not None:
                y += b
        return y.reshape(*lead, y.shape[-1])

    # -- calibration in stages (what ``qfast.quantize_model`` drives) ----------------------
    #
    # Optional: a model that only evaluates (a test's toy model) need not run in blocks; the
    # defaults below say so, and quantize_model refuses such a model up front.
    # A block runs as stages between its linear groups: stage 0 computes the input of group
    # 0; stage k runs group k - 1's linears on their input and computes group k's; the last
    # stage finishes the block (the residual stream ``h`` is updated in place). Between the
    # stages, a calibration driver sees each group's input over all the calibration data, so
    # it can quantize the group before the next stage runs on its quantized output.

    @property
    def num_blocks(self) -> int:
        """How many blocks (decoder or encoder layers) the model has."""
        raise NotImplementedError(f"{type(self).__name__} does not run in blocks")

    def block_prefix(self, i: int) -> str:
        """The name prefix of block ``i``'s tensors (``"model.layers.3."``)."""
        raise NotImplementedError(f"{type(self).__name__} does not run in blocks")

    def block_groups(self, i: int) -> list[LinearGroup]:
        """Block ``i``'s linears, grouped by shared input, in execution order."""
        raise NotImplementedError(f"{type(self).__name__} does not run in stages")

    def calibration_batch(self, batch: Any) -> CalibrationBatch:
        """A batch of calibration inputs -> the hidden states block 0 reads."""
        raise NotImplementedError(f"{type(self).__name__} does not run in stages")

    def block_stage(self, i: int, k: int, h: F32, x: F32 | None, ctx: Any = None) -> F32 | None:
        """Stage ``k`` of block ``i`` on one batch (see above)."""
        raise NotImplementedError(f"{type(self).__name__} does not run in stages")

    def head_group(self) -> LinearGroup | None:
        """The linears after the last block (an untied LM head), or None."""
        return None

    def head_input(self, h: F32, ctx: Any = None) -> F32:
        """The input of :meth:`head_group`'s linears, from the last block's output."""
        raise NotImplementedError(f"{type(self).__name__} has no head linears")

    def free_scratch(self) -> None:
        """Drops the scratch arrays the forward pass keeps for reuse (made again when next
        needed): a calibration driver calls it before the memory-hungry part of a stage.
        The base class keeps none."""
        return None

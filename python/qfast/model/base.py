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
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from ..tensor.qtensor import QTensor

F32 = npt.NDArray[np.float32]
Weight = Union[F32, QTensor]
#: A capture hook: called with a linear's name and its input rows, float32 ``[tokens, in]``.
Capture = Callable[[str, F32], None]

__all__ = ["F32", "Capture", "Model", "Weight", "WeightStore"]


class WeightStore(MutableMapping[str, Weight]):
    """Name -> weight, read lazily from a checkpoint, with replacements layered on top.

    Args:
        shapes: every tensor's logical shape, by name (known without reading any data).
        load: reads one tensor as float32 (or a QTensor, for quantized checkpoints).
        dtypes: the dtype each tensor is stored in (``"float16"``, ``"Q4_1"``, ...), for
            reports; default: float32.
        cache: keep tensors once read (the forward pass reads each weight on every call, so a
            float16 checkpoint is converted only once); :meth:`release` drops them.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        load: Callable[[str], Weight],
        *,
        dtypes: dict[str, str] | None = None,
        cache: bool = True,
    ) -> None:
        self._shapes = dict(shapes)
        self._load = load
        self._dtypes = dict(dtypes or {})
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
        """Drop cached tensors read from the checkpoint (all, or those named); replacements
        assigned by the user are kept."""
        for name in list(self._held) if names is None else list(names):
            if name in self._held and name not in self._replaced:
                del self._held[name]

    def replaced(self) -> list[str]:
        """The names assigned a replacement (e.g. the quantized linears), in store order."""
        return [n for n in self._shapes if n in self._replaced]


def _dtype_name(value: Weight) -> str:
    return "qtensor" if isinstance(value, QTensor) else str(np.asarray(value).dtype)


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

    @abstractmethod
    def linear_names(self) -> list[str]:
        """Every linear layer's module name (its weight is ``f"{name}.weight"``), block by
        block, in execution order: the names `capture` hooks receive."""

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

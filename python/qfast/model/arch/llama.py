"""The Llama family's forward pass in NumPy: Llama (1/2/3), Mistral and Qwen2.

RMSNorm, rotary position embeddings (RoPE), grouped-query attention (GQA), a SwiGLU MLP,
optional q/k/v biases (Qwen2) and tied embeddings, over full sequences (no KV cache, no
padding), float32 throughout. Every linear goes through :meth:`Model.linear`, so any of them
may be a :class:`qfast.QTensor` run by ``qfast.linear``.

RoPE comes in two layouts of the Q/K weight rows:

- ``qk_layout="hf"``: the Hugging Face checkpoint's rows; each head's dimension ``i`` is
  rotated together with ``i + d/2`` (``rotate_half``).
- ``qk_layout="gguf"``: rows permuted by llama.cpp's converter (:func:`permute_qk`), so that
  each head's adjacent dimensions ``2i, 2i+1`` are rotated together (llama.cpp's normal RoPE).
  Both layouts give the same logits; :func:`unpermute_qk` turns GGUF rows back into HF rows.
  llama.cpp's converter permutes q/k biases too (``attention_bias``), and does not permute
  Qwen2 at all (llama.cpp runs Qwen2 with NeoX RoPE): a Qwen2 GGUF is ``qk_layout="hf"``.

The forward pass is split so calibration can run one block at a time::

    h = model.embed(ids)
    for i in range(model.config.num_hidden_layers):
        h = model.block(i, h, capture=hook)
    logits = model.head(h)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._checks import as_int
from ..base import F32, CalibrationBatch, Capture, LinearGroup, Model, WeightStore

__all__ = ["Llama", "LlamaConfig", "permute_qk", "unpermute_qk"]

#: model_type -> the class name Hugging Face writes under ``architectures``.
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_QK_LAYOUTS = ("hf", "gguf")
#: Each block's linears by shared input (the capture order): stage k runs group k - 1.
_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
#: Query rows (positions x heads of one KV group) per block of attention: the block's scores
#: (rows x keys float32) stay in the L2 cache.
_ATTENTION_ROWS = 192
#: Elements per block of the row-wise elementwise passes (the SwiGLU activation).
_ELEMENTWISE_BLOCK = 49152
#: The least softmax denominator (sum of exp(score)) taken without subtracting each row's
#: maximum: its largest term is then >= 1e-20 / keys, and terms that fall into float32's
#: subnormal range (< 1.2e-38) are below 1e-14 of it.
_MIN_TOTAL = np.float32(1e-20)
#: Keys LlamaConfig reads (and writes back); everything else in config.json is kept in
#: ``extra`` and written back unchanged.
_KNOWN_KEYS = frozenset(
    {
        "model_type",
        "architectures",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
        "attention_bias",
        "mlp_bias",
        "hidden_act",
        "sliding_window",
        "use_sliding_window",
        "max_window_layers",
        "layer_types",
        "rope_scaling",
    }
)


@dataclass
class LlamaConfig:
    """A Llama-family checkpoint's hyperparameters (Hugging Face ``config.json`` names).

    ``qkv_bias`` / ``o_bias``: whether q/k/v and o_proj have biases (Llama's
    ``attention_bias`` sets both; Qwen2 always has q/k/v biases and no o_proj bias).
    ``layer_windows``: each layer's sliding attention window (``None``: full causal
    attention); a token attends to itself and the ``window - 1`` tokens before it.
    """

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    layer_windows: tuple[int | None, ...] = ()
    rope_scaling: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layer_windows:
            self.layer_windows = (self.sliding_window,) * self.num_hidden_layers
        self._check()

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> LlamaConfig:
        """Read a Hugging Face ``config.json`` (as a dict) of model_type llama, mistral or qwen2.

        Raises:
            TypeError: ``config`` is not a dict.
            ValueError: an unsupported model_type, activation or rope_scaling; a missing or
                inconsistent size.
        """
        if not isinstance(config, dict):
            raise TypeError(f"LlamaConfig.from_hf: config must be a dict, got {type(config)}")
        mt = config.get("model_type")
        if mt not in _ARCHITECTURES:
            raise ValueError(
                f"LlamaConfig: model_type {mt!r} is not a Llama-family model; supported: "
                f"{', '.join(_ARCHITECTURES)}"
            )

        def need(key: str) -> Any:
            if config.get(key) is None:
                raise ValueError(f"LlamaConfig: config.json ({mt}) has no {key!r}; add it")
            return config[key]

        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(
                f"LlamaConfig: hidden_act {act!r} is not supported; the Llama family's MLP is "
                "SwiGLU (hidden_act 'silu')"
            )
        hidden = _int(need("hidden_size"), "hidden_size")
        heads = _int(need("num_attention_heads"), "num_attention_heads")
        kv = config.get("num_key_value_heads")
        head_dim = config.get("head_dim")
        if head_dim is None:
            if heads <= 0 or hidden % heads:
                raise ValueError(
                    f"LlamaConfig: hidden_size {hidden} is not a multiple of "
                    f"num_attention_heads {heads}; give head_dim explicitly"
                )
            head_dim = hidden // heads
        layers = _int(need("num_hidden_layers"), "num_hidden_layers")
        window = config.get("sliding_window")
        windows: tuple[int | None, ...]
        if mt == "qwen2":
            if not config.get("use_sliding_window", False):
                window = None
            first = config.get("max_window_layers", 28)
            types = config.get("layer_types")
            if types is not None:
                if len(types) != layers:
                    raise ValueError(
                        f"LlamaConfig: layer_types has {len(types)} entries for {layers} layers"
                    )
                windows = tuple(window if t == "sliding_attention" else None for t in types)
            else:
                windows = tuple(window if i >= first else None for i in range(layers))
        elif mt == "mistral":
            windows = (window,) * layers
        else:
            window = None
            windows = (None,) * layers
        attention_bias = bool(config.get("attention_bias", False))
        extra = {k: v for k, v in config.items() if k not in _KNOWN_KEYS}
        if mt == "qwen2":
            extra["max_window_layers"] = config.get("max_window_layers", 28)
            extra["use_sliding_window"] = bool(config.get("use_sliding_window", False))
            if config.get("sliding_window") is not None:
                extra["sliding_window"] = config["sliding_window"]
            if config.get("layer_types") is not None:
                extra["layer_types"] = list(config["layer_types"])
        return cls(
            model_type=mt,
            hidden_size=hidden,
            intermediate_size=_int(need("intermediate_size"), "intermediate_size"),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=_int(heads if kv is None else kv, "num_key_value_heads"),
            head_dim=_int(head_dim, "head_dim"),
            vocab_size=_int(need("vocab_size"), "vocab_size"),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=_int(
                config.get("max_position_embeddings", 2048), "max_position_embeddings"
            ),
            qkv_bias=True if mt == "qwen2" else attention_bias and mt == "llama",
            o_bias=attention_bias and mt == "llama",
            mlp_bias=bool(config.get("mlp_bias", False)) and mt == "llama",
            sliding_window=None if window is None else _int(window, "sliding_window"),
            layer_windows=windows,
            rope_scaling=None
            if config.get("rope_scaling") is None
            else dict(config["rope_scaling"]),
            extra=extra,
        )

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict of this configuration (what :meth:`from_hf` reads back)."""
        out: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = self.mlp_bias
        elif self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        else:
            out["use_sliding_window"] = self.sliding_window is not None
            if self.sliding_window is not None:
                out["sliding_window"] = self.sliding_window
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def _check(self) -> None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"LlamaConfig: {name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads {self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim {self.head_dim} must be even for RoPE")
        if not (self.rms_norm_eps >= 0 and math.isfinite(self.rms_norm_eps)):
            raise ValueError(f"LlamaConfig: rms_norm_eps {self.rms_norm_eps} must be >= 0")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"LlamaConfig: rope_theta {self.rope_theta} must be positive")
        if len(self.layer_windows) != self.num_hidden_layers:
            raise ValueError(
                f"LlamaConfig: {len(self.layer_windows)} layer windows for "
                f"{self.num_hidden_layers} layers"
            )
        for w in self.layer_windows:
            if w is not None and w <= 0:
                raise ValueError(f"LlamaConfig: sliding_window {w} must be positive")
        _rope_frequencies(self)  # rejects an unsupported rope_scaling


def _int(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():  # JSON written as 4096.0
        return int(value)
    try:
        return as_int(value, f"LlamaConfig: {name}")
    except TypeError as e:  # a config.json value: bad data, not a caller's wrong type
        raise ValueError(str(e)) from None


def _as_config(config: dict[str, Any] | LlamaConfig) -> LlamaConfig:
    return config if isinstance(config, LlamaConfig) else LlamaConfig.from_hf(config)


def _rope_frequencies(cfg: LlamaConfig) -> np.ndarray:
    """RoPE's inverse frequencies, float64 ``[head_dim / 2]``, with Llama 3.1's scaling."""
    d = cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(
            f"LlamaConfig: rope_scaling type {kind!r} is not supported; supported: none, "
            "'default' and 'llama3'"
        )
    try:
        factor = float(rs["factor"])
        low = float(rs.get("low_freq_factor", 1.0))
        high = float(rs.get("high_freq_factor", 4.0))
        old = float(rs.get("original_max_position_embeddings", 8192))
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"LlamaConfig: rope_scaling {rs!r} needs a numeric 'factor' (and optionally "
            "low_freq_factor, high_freq_factor, original_max_position_embeddings)"
        ) from None
    if not (factor > 0 and high > low > 0 and old > 0):
        raise ValueError(
            f"LlamaConfig: llama3 rope_scaling {rs!r} needs factor > 0 and "
            "high_freq_factor > low_freq_factor > 0"
        )
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - low) / (high - low)
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(medium, (1 - smooth) * inv / factor + smooth * inv, scaled)


def permute_qk(w: Any, n_head: int) -> np.ndarray:
    """Hugging Face Q/K rows -> llama.cpp's (``LlamaModel.permute`` in convert_hf_to_gguf.py).

    ``w``: ``[n_head * head_dim, ...]`` (a q_proj / k_proj weight or bias); ``n_head``: the
    number of heads its rows hold (num_key_value_heads for k_proj). Within each head, rows
    ``(i, i + d/2)`` move to ``(2i, 2i + 1)``.
    """
    a = np.asarray(w)
    d = _head_rows(a, n_head)
    return a.reshape(n_head, 2, d // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def unpermute_qk(w: Any, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K rows -> Hugging Face's: the inverse of :func:`permute_qk`."""
    a = np.asarray(w)
    d = _head_rows(a, n_head)
    return a.reshape(n_head, d // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _head_rows(a: np.ndarray, n_head: int) -> int:
    if a.ndim == 0 or n_head <= 0 or a.shape[0] % n_head or (a.shape[0] // n_head) % 2:
        raise ValueError(
            f"permute_qk: {a.shape[0] if a.ndim else 0} rows do not split into {n_head} heads "
            "of an even head_dim; pass the number of heads this weight holds"
        )
    return a.shape[0] // n_head


def _layer(i: int) -> str:
    return f"model.layers.{i}."


class Llama(Model):
    """A Llama-family causal LM (llama, mistral, qwen2) over a :class:`WeightStore`."""

    arch = "llama"
    kind = "causal"
    config: LlamaConfig

    def __init__(
        self,
        config: LlamaConfig,
        weights: WeightStore,
        tokenizer: Any = None,
        *,
        source: str | Path | None = None,
        compute: str = "int8",
        qk_layout: str = "hf",
    ) -> None:
        if qk_layout not in _QK_LAYOUTS:
            raise ValueError(f'Llama: qk_layout must be "hf" or "gguf", not {qk_layout!r}')
        super().__init__(config, weights, tokenizer, source=source, compute=compute)
        self.qk_layout = qk_layout
        expected = self.tensor_shapes(config)
        for name, shape in expected.items():
            if name not in weights:
                raise ValueError(
                    f"Llama: the checkpoint has no tensor {name!r}; it does not match its "
                    f"config ({config.model_type}, {config.num_hidden_layers} layers)"
                )
            if tuple(weights.shape(name)) != shape:
                raise ValueError(
                    f"Llama: {name!r} has shape {tuple(weights.shape(name))}, the config says "
                    f"{shape}"
                )
        self._inv_freq = _rope_frequencies(config)
        self._rope_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._mask_cache: dict[tuple[int, int | None], F32] = {}
        self._work: F32 = np.empty(0, np.float32)
        self._buffers: dict[str, F32] = {}

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any] | LlamaConfig,
        weights: WeightStore,
        tokenizer: Any = None,
        *,
        source: str | Path | None = None,
        qk_layout: str = "hf",
    ) -> Llama:
        """A model from a ``config.json`` dict (or a :class:`LlamaConfig`) and its tensors.

        Raises:
            ValueError: the config is not a supported Llama-family one, or a tensor the config
                implies is missing or has another shape.
        """
        return cls(_as_config(config), weights, tokenizer, source=source, qk_layout=qk_layout)

    @staticmethod
    def tensor_shapes(config: dict[str, Any] | LlamaConfig) -> dict[str, tuple[int, ...]]:
        """Every tensor a checkpoint of ``config`` holds, by Hugging Face name -> shape."""
        c = _as_config(config)
        h, d = c.hidden_size, c.head_dim
        q, kv, ff = c.num_attention_heads * d, c.num_key_value_heads * d, c.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, h)}
        for i in range(c.num_hidden_layers):
            p = _layer(i)
            shapes[p + "input_layernorm.weight"] = (h,)
            for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                shapes[f"{p}self_attn.{proj}.weight"] = (rows, h)
                if c.qkv_bias:
                    shapes[f"{p}self_attn.{proj}.bias"] = (rows,)
            shapes[p + "self_attn.o_proj.weight"] = (h, q)
            if c.o_bias:
                shapes[p + "self_attn.o_proj.bias"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            for proj, shape in (
                ("gate_proj", (ff, h)),
                ("up_proj", (ff, h)),
                ("down_proj", (h, ff)),
            ):
                shapes[f"{p}mlp.{proj}.weight"] = shape
                if c.mlp_bias:
                    shapes[f"{p}mlp.{proj}.bias"] = (shape[0],)
        shapes["model.norm.weight"] = (h,)
        if not c.tie_word_embeddings:
            shapes["lm_head.weight"] = (c.vocab_size, h)
        return shapes

    def linear_names(self) -> list[str]:
        """Block by block: q, k, v, o, gate, up, down; then lm_head if it is not tied."""
        names = []
        for i in range(self.config.num_hidden_layers):
            p = _layer(i)
            names += [f"{p}self_attn.{n}_proj" for n in "qkvo"]
            names += [f"{p}mlp.{n}_proj" for n in ("gate", "up", "down")]
        if not self.config.tie_word_embeddings:
            names.append("lm_head")
        return names

    # -- the forward pass ------------------------------------------------------------------

    def embed(self, ids: Any) -> F32:
        """Token ids ``[batch, seq]`` -> hidden states, float32 ``[batch, seq, hidden]``."""
        ids = self._check_ids(ids)
        table = self.weights["model.embed_tokens.weight"]
        if not isinstance(table, np.ndarray):
            table = table.dequantize(np.float32)
        return np.take(table, ids, axis=0).astype(np.float32, copy=False)

    def block(self, i: int, h: F32, *, capture: Capture | None = None) -> F32:
        """Decoder block ``i`` over hidden states ``h`` ``[batch, seq, hidden]``: a new array
        (``h`` is left as it is, so a calibration pass can run a block twice on one input).

        ``capture`` (if given) is called with each linear's name (:meth:`linear_names`) and its
        input rows, float32 ``[batch*seq, in]``; q/k/v (and gate/up) share one input array.
        """
        h = h.copy(order="C") if isinstance(h, np.ndarray) else np.asarray(h)
        return self._block(i, h, capture)

    def _block(self, i: int, h: F32, capture: Capture | None) -> F32:
        """:meth:`block` updating ``h`` (C-contiguous float32) in place: the residual stream."""
        c = self.config
        if not 0 <= i < c.num_hidden_layers:
            raise ValueError(f"Llama.block: layer {i} out of range 0..{c.num_hidden_layers - 1}")
        if h.ndim != 3 or h.shape[2] != c.hidden_size or h.dtype != np.float32:
            raise ValueError(
                f"Llama.block: h must be float32 [batch, seq, {c.hidden_size}] (from embed), "
                f"got {h.dtype} {h.shape}"
            )
        x = None
        for k in range(len(_GROUPS) + 1):
            x = self._stage(i, k, h, x, capture)
        return h

    # -- the block in stages, for calibration -----------------------------------------------

    def block_groups(self, i: int) -> list[LinearGroup]:
        """Block ``i``'s linears by shared input, in execution order: q/k/v (scales fold into
        the input norm), o (into v's rows when v's outputs are o's inputs, i.e. without GQA),
        gate/up (into the post-attention norm), down (into up's rows)."""
        c = self.config
        p = _layer(i)
        a, m = p + "self_attn.", p + "mlp."
        no_gqa = c.num_key_value_heads == c.num_attention_heads
        return [
            LinearGroup(tuple(f"{a}{t}_proj" for t in "qkv"), p + "input_layernorm.weight"),
            LinearGroup((a + "o_proj",), a + "v_proj" if no_gqa else None),
            LinearGroup((m + "gate_proj", m + "up_proj"), p + "post_attention_layernorm.weight"),
            LinearGroup((m + "down_proj",), m + "up_proj"),
        ]

    def block_prefix(self, i: int) -> str:
        return _layer(i)

    @property
    def num_blocks(self) -> int:
        return self.config.num_hidden_layers

    def calibration_batch(self, batch: Any) -> CalibrationBatch:
        """Token ids ``[batch, seq]`` -> the hidden states block 0 reads."""
        return CalibrationBatch(self.embed(batch), None, None)

    def block_stage(self, i: int, k: int, h: F32, x: F32 | None, ctx: Any = None) -> F32 | None:
        """Stage ``k`` of block ``i`` (0 <= k <= 4) on one batch: stage 0 returns the input
        of :meth:`block_groups` ``[0]`` (q/k/v); stage ``k`` runs group ``k - 1``'s linears
        on their input ``x`` and returns group ``k``'s input; the last returns None. ``h``
        ``[batch, seq, hidden]`` is the residual stream, updated in place."""
        return self._stage(i, k, h, x, None)

    def head_group(self) -> LinearGroup | None:
        if self.config.tie_word_embeddings:
            return None
        return LinearGroup(("lm_head",), "model.norm.weight")

    def head_input(self, h: F32, ctx: Any = None) -> F32:
        """The LM head's input: the final norm of ``h``, ``[batch, seq, hidden]``."""
        b, s, n = h.shape
        return self._norm(h.reshape(b * s, n), "model.norm.weight").reshape(b, s, n)

    def _stage(self, i: int, k: int, h: F32, x: F32 | None, capture: Capture | None) -> F32 | None:
        c = self.config
        b, s, _ = h.shape
        n = b * s
        p = _layer(i)
        a, m = p + "self_attn.", p + "mlp."
        rows = h.reshape(n, c.hidden_size)
        # Intermediate arrays live in buffers reused from block to block (fresh large arrays
        # cost a page fault per 4 KiB); those handed to `capture` are fresh.
        buf = self._buffer
        keep = capture is not None
        if k == 0:  # the attention's input
            return self._norm(rows, p + "input_layernorm.weight", buf("x", rows.shape, keep))
        assert x is not None
        x = x.reshape(n, x.shape[-1])
        if capture is not None:
            for name in _GROUPS[k - 1]:
                capture((a if k <= 2 else m) + name, x)
        if k == 1:  # q/k/v and the attention -> o_proj's input
            return self._attention_stage(i, x, b, s, keep)
        if k == 2:  # o_proj, the residual, the MLP's input
            o_bias = a + "o_proj.bias" if c.o_bias else None
            rows += self.linear(x, a + "o_proj.weight", o_bias, out=buf("o", rows.shape))
            return self._norm(
                rows, p + "post_attention_layernorm.weight", buf("x", rows.shape, keep)
            )
        ff = c.intermediate_size
        mb = c.mlp_bias
        if k == 3:  # gate/up and SwiGLU -> down_proj's input
            gate_bias, up_bias = (m + "gate_proj.bias", m + "up_proj.bias") if mb else (None, None)
            gate = self.linear(x, m + "gate_proj.weight", gate_bias, out=buf("gate", (n, ff), keep))
            up = self.linear(x, m + "up_proj.weight", up_bias, out=buf("up", (n, ff)))
            _silu_mul(gate, up)
            return gate
        if k == 4:  # down_proj and the residual
            down_bias = m + "down_proj.bias" if mb else None
            rows += self.linear(x, m + "down_proj.weight", down_bias, out=buf("o", rows.shape))
            return None
        raise ValueError(f"Llama.block_stage: stage {k} out of range 0..{len(_GROUPS)}")

    def _attention_stage(self, i: int, x: F32, b: int, s: int, keep: bool) -> F32:
        """q/k/v of the normed rows ``x``, RoPE and causal attention: o_proj's input."""
        c = self.config
        n = b * s
        nh, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        g = nh // nkv
        a = _layer(i) + "self_attn."
        buf = self._buffer
        names = [f"{a}{t}_proj.weight" for t in "qkv"]
        bias = [name[: -len("weight")] + "bias" if c.qkv_bias else None for name in names]
        q = self.linear(x, names[0], bias[0], out=buf("q", (n, nh * d)))
        k = self.linear(x, names[1], bias[1], out=buf("k", (n, nkv * d)))
        v = self.linear(x, names[2], bias[2], out=buf("v", (n, nkv * d)))
        rot_k, rot_q = self._rope(s)
        # Queries as [b, kv, s, g, d] (each KV head's group of query heads side by side, so a
        # range of positions is one contiguous block of rows), keys and values [b, kv, s, d]:
        # GQA without repeating K/V. The 1/sqrt(d) score scale is folded into q's RoPE.
        qr = buf("qr", (b, nkv, s, g, d))
        self._rotate(q.reshape(b, s, nkv, g, d).transpose(0, 2, 1, 3, 4), rot_q, qr)
        kr = buf("kr", (b, nkv, s, d))
        self._rotate(k.reshape(b, s, nkv, d).transpose(0, 2, 1, 3), rot_k, kr)
        vt = v.reshape(b, s, nkv, d).transpose(0, 2, 1, 3)  # a view: rows d apart per head
        ctx = self._attend(qr, kr, vt, c.layer_windows[i])
        attn = buf("attn", (b, s, nkv, g, d), keep)
        attn[...] = ctx.transpose(0, 2, 1, 3, 4)
        return attn.reshape(n, nh * d)

    def linear(self, x: F32, name: str, bias: str | None = None, *, out: F32 | None = None) -> F32:
        """:meth:`Model.linear`, writing a float weight's product into ``out`` when given (a
        C-contiguous ``[rows, out_features]`` float32 array; a QTensor's product is returned
        as ``qfast.linear`` makes it)."""
        w = self.weights[name]
        if out is None or not isinstance(w, np.ndarray) or x.ndim != 2:
            return super().linear(x, name, bias)
        np.matmul(x, w.T, out=out)
        if bias is not None:
            out += self._array(bias)
        return out

    def _array(self, name: str) -> F32:
        """A weight as a float32 array (a norm weight or bias; dequantized if replaced by a
        QTensor)."""
        w = self.weights[name]
        return w if isinstance(w, np.ndarray) else w.dequantize(np.float32)

    def free_scratch(self) -> None:
        self._buffers.clear()
        self._work = np.empty(0, np.float32)

    def _buffer(self, key: str, shape: tuple[int, ...], fresh: bool = False) -> F32:
        """A float32 array of ``shape`` kept for reuse under ``key`` (a new one if ``fresh``)."""
        if fresh:
            return np.empty(shape, np.float32)
        held = self._buffers.get(key)
        if held is None or held.shape != shape:
            held = self._buffers[key] = np.empty(shape, np.float32)
        return held

    def head(self, h: F32, *, capture: Capture | None = None) -> F32:
        """The final norm and the LM head: hidden states -> float32 ``[batch, seq, vocab]``."""
        c = self.config
        b, s, _ = h.shape
        x = self._norm(h.reshape(b * s, c.hidden_size), "model.norm.weight")
        if c.tie_word_embeddings:
            name = "model.embed_tokens.weight"
        else:
            name = "lm_head.weight"
            if capture is not None:
                capture("lm_head", x)
        return self.linear(x, name).reshape(b, s, c.vocab_size)

    def logits(self, ids: Any, *, capture: Capture | None = None) -> F32:
        """Next-token logits float32 ``[batch, seq, vocab]`` of full sequences ``ids``."""
        h = self.embed(ids)
        for i in range(self.config.num_hidden_layers):
            h = self._block(i, h, capture)
        return self.head(h, capture=capture)

    forward = logits

    # -- pieces ----------------------------------------------------------------------------

    def _check_ids(self, ids: Any) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"Llama: ids must be an integer array [batch, seq], got {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(
                f"Llama: ids must be 2-d [batch, seq], got shape {arr.shape}"
                + ("; pass ids[None] for one sequence" if arr.ndim == 1 else "")
            )
        if arr.size == 0:
            raise ValueError(f"Llama: ids {arr.shape} are empty; pass at least one token")
        n = self.config.vocab_size
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"Llama: token ids must be in 0..{n - 1}, got {lo}..{hi}")
        if arr.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"Llama: {arr.shape[1]} tokens exceed the model's context "
                f"(max_position_embeddings {self.config.max_position_embeddings}); split the "
                "text into windows"
            )
        return arr.astype(np.intp, copy=False)

    def _norm(self, x: F32, name: str, out: F32 | None = None) -> F32:
        """RMSNorm in float32 as Hugging Face computes it: x * rsqrt(mean(x^2) + eps) * w."""
        w = self._array(name)
        ms = np.einsum("ij,ij->i", x, x)[:, None]
        ms *= np.float32(1.0 / x.shape[1])
        ms += np.float32(self.config.rms_norm_eps)
        np.sqrt(ms, out=ms)
        out = np.divide(x, ms, out=out)
        out *= w
        return out

    def _rope(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """The rotations e^(i·pos·freq), complex64 ``[s, d/2]``, for positions 0..s-1: as they
        are (for k) and times 1/sqrt(d) (for q). Cached for the longest s so far."""
        cached = self._rope_cache
        if cached is None or cached[0] < s:
            angle = np.arange(s, dtype=np.float64)[:, None] * self._inv_freq[None, :]
            rot = np.exp(1j * angle)
            scale = 1.0 / math.sqrt(self.config.head_dim)
            cached = self._rope_cache = (
                s,
                rot.astype(np.complex64),
                (rot * scale).astype(np.complex64),
            )
        return cached[1][:s], cached[2][:s]

    def _rotate(self, x: F32, rot: np.ndarray, out: F32) -> None:
        """RoPE of ``x`` ``[b, kv, s, (g,) d]`` into ``out``: the pairs (i, i + d/2) for the
        "hf" layout, (2i, 2i + 1) for "gguf", as complex numbers times ``rot``.

        ``out`` holds each rotated pair side by side (2i, 2i + 1) in both layouts. Queries and
        keys are stored in the same order, so their dot products (all attention uses) are
        those of the layout's own order.
        """
        d = x.shape[-1]
        if x.ndim == 5:
            rot = rot[:, None, :]
        z = out.view(np.complex64)
        if self.qk_layout == "hf":
            pairs = out.reshape(*out.shape[:-1], d // 2, 2)
            pairs[..., 0] = x[..., : d // 2]
            pairs[..., 1] = x[..., d // 2 :]
            z *= rot
        else:
            np.multiply(x.view(np.complex64), rot, out=z)

    def _attend(self, q: F32, k: F32, v: F32, window: int | None) -> F32:
        """Causal attention: softmax(q k^T + mask) v, a block of query positions at a time.

        ``q`` ``[b, kv, s, g, d]`` (already scaled by 1/sqrt(d)), ``k``, ``v`` ``[b, kv, s, d]``;
        returns ``[b, kv, s, g, d]``. Each block of queries sees only the keys up to its last
        position (and from its first position's window on), so the masked upper triangle is
        mostly never computed; the mask is added only to the columns where it has -inf. The
        softmax subtracts each row's maximum; its normalization is applied to the context
        (``[.., d]``) rather than to the probabilities (``[.., keys]``).
        """
        b, nkv, s, g, d = q.shape
        mask = self._mask(s, window)
        if window is not None and window >= s:
            window = None
        q4 = q.reshape(b, nkv, s * g, d)
        kt = k.transpose(0, 1, 3, 2)
        out = self._buffer("ctx", q4.shape)
        step = max(1, _ATTENTION_ROWS // g)
        # One scores buffer for every block and layer: fresh large arrays cost page faults.
        size = b * nkv * min(s, step) * g * s
        if self._work.size < size:
            self._work = np.empty(size, np.float32)
        for i0 in range(0, s, step):
            i1 = min(s, i0 + step)
            lo = 0 if window is None else max(0, i0 - window + 1)
            rows = slice(i0 * g, i1 * g)
            shape = (b, nkv, (i1 - i0) * g, i1 - lo)
            scores = self._work[: math.prod(shape)].reshape(shape)
            for shifted in (False, True):
                np.matmul(q4[:, :, rows], kt[..., lo:i1], out=scores)
                s5 = scores.reshape(b, nkv, i1 - i0, g, i1 - lo)
                if i1 - i0 > 1:  # the causal triangle: keys i0+1 .. i1-1
                    s5[..., i0 + 1 - lo :] += mask[i0:i1, None, i0 + 1 : i1]
                if window is not None and i1 - window > lo:  # keys that left the window
                    s5[..., : i1 - window - lo] += mask[i0:i1, None, lo : i1 - window]
                if shifted:
                    scores -= scores.max(axis=-1, keepdims=True)
                with np.errstate(over="ignore"):
                    np.exp(scores, out=scores)
                total = scores.sum(axis=-1, keepdims=True)
                # Unshifted, exp is as accurate as after subtracting each row's maximum as
                # long as no term overflows and the largest is far above float32's subnormal
                # range; otherwise the block is redone the usual way.
                if shifted or (np.isfinite(total.max()) and total.min() >= _MIN_TOTAL):
                    break
            ctx = out[:, :, rows]
            np.matmul(scores, v[:, :, lo:i1], out=ctx)
            ctx /= total
        return out.reshape(b, nkv, s, g, d)

    def _mask(self, s: int, window: int | None) -> F32:
        """The additive causal mask ``[s, s]``: 0 where key j is visible from query i (j <= i,
        and i - j < window), -inf elsewhere."""
        if window is not None and window >= s:
            window = None
        key = (s, window)
        mask = self._mask_cache.get(key)
        if mask is None:
            i = np.arange(s)
            hidden = i[None, :] > i[:, None]
            if window is not None:
                hidden |= i[:, None] - i[None, :] >= window
            mask = np.where(hidden, np.float32(-np.inf), np.float32(0.0)).astype(np.float32)
            if len(self._mask_cache) > 4:
                self._mask_cache.clear()
            self._mask_cache[key] = mask
        return mask


def _silu_mul(gate: F32, up: F32) -> None:
    """gate <- silu(gate) * up = gate * up / (1 + exp(-gate)), in place, a block of rows at a
    time (the five passes over a block stay in cache)."""
    step = max(1, _ELEMENTWISE_BLOCK // gate.shape[-1])
    with np.errstate(over="ignore"):
        for i in range(0, gate.shape[0], step):
            g, u = gate[i : i + step], up[i : i + step]
            t = np.negative(g)
            np.exp(t, out=t)
            t += 1.0
            g *= u
            g /= t

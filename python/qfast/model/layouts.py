"""How each checkpoint format stores a model's linears, for the writer and for ``load_model``.

A *layout* turns a quantized linear (``NAME.weight``, a :class:`~qfast.QTensor`) into the
format's tensors, remembers what it wrote, and at the end gives ``config.json``'s
``quantization_config``. Float tensors (embeddings, norms, biases, linears kept in float) are
stored as they are by every format.

- ``"qfast"``: the QTensor's own entries (``NAME.weight.qfast_header``, ...), and
  ``quantization_config: {"quant_method": "qfast", ...recipe}``;
- ``"gptq"``, ``"awq"``, ``"compressed-tensors"``: see :mod:`qfast.formats.gptq`,
  :mod:`qfast.formats.awq`, :mod:`qfast.formats.compressed_tensors`.

A *reader* does the opposite for ``load_model``: from ``quantization_config`` it knows which
entries make up a quantized linear, its shape (without reading the codes), and how to decode
it to a canonical QTensor.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..formats import awq, gptq
from ..formats import compressed_tensors as ct
from ..formats._words import Grid, from_words, grid, words
from ..tensor.qtensor import QTensor

__all__ = ["FORMATS", "Layout", "Reader", "layout", "reader"]

#: ``model.save(path, format=...)`` folder formats (``"gguf"``, one file, is written by
#: ``qfast.model.gguf_source.save_gguf``).
FORMATS = ("qfast", "gptq", "awq", "compressed-tensors")
_FOREIGN = {"gptq": "gptq", "awq": "awq", "compressed-tensors": "compressed-tensors"}


def _module(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


class Layout:
    """qfast's own layout; the base of the others."""

    name = "qfast"

    def __init__(self, recipe: Any = None) -> None:
        self.recipe = recipe
        self.quantized: dict[str, dict[str, Any]] = {}  # module -> its config args

    def entries(self, name: str, value: QTensor | np.ndarray) -> dict[str, QTensor | np.ndarray]:
        """The entries ``value`` (a model tensor) is stored as."""
        if isinstance(value, QTensor):
            self.quantized[_module(name)] = {}
        return {name: value}

    def quantization_config(self, float_linears: list[str]) -> dict[str, Any]:
        return {"quant_method": "qfast", **(self.recipe.to_dict() if self.recipe else {})}

    def rewrite(self) -> Callable[[str, np.ndarray], np.ndarray] | None:
        """A change to apply to the shards already written (GPTQ's v1 -> v2), once."""
        return None


class _Foreign(Layout, ABC):
    """A layout whose quantized linears are a format's tensors."""

    fmt: str = ""

    def entries(self, name: str, value: QTensor | np.ndarray) -> dict[str, QTensor | np.ndarray]:
        if not isinstance(value, QTensor):
            return {name: value}
        module = _module(name)
        g = grid(value, name, self.fmt)
        out = self.encode(g, name)
        self.quantized[module] = self.args(g)
        return {f"{module}.{k}": v for k, v in out.items()}

    @abstractmethod
    def encode(self, g: Grid, name: str) -> dict[str, np.ndarray]:
        """The format's tensors of one linear (keyed by suffix)."""

    @abstractmethod
    def args(self, g: Grid) -> dict[str, Any]:
        """The linear's settings as the format's config describes them."""


class GPTQLayout(_Foreign):
    name = fmt = "gptq"

    def __init__(self, recipe: Any = None, checkpoint_format: str | None = None) -> None:
        super().__init__(recipe)
        if checkpoint_format is not None:
            gptq._check_format(checkpoint_format)
        self.explicit = checkpoint_format is not None
        self.version = checkpoint_format or "gptq"
        self._v1: set[str] = set()  # modules encoded in v1 before the switch to v2
        self.static = False  # some layer ran act-order on static groups

    def encode(self, g: Grid, name: str) -> dict[str, np.ndarray]:
        if self.version == "gptq" and not self.explicit and gptq.v1_needs_v2(g):
            warnings.warn(
                f"{name} has a zero point of 0, which GPTQ v1 cannot store (it stores zero - "
                "1): the checkpoint is written as checkpoint_format 'gptq_v2' (read by "
                "GPTQModel and vLLM >= 0.11.1); pass checkpoint_format='gptq' to refuse instead",
                UserWarning,
                stacklevel=6,  # model.save's caller
            )
            self.version = "gptq_v2"
            self._v1 = set(self.quantized)
        return gptq.encode(g, name, self.version)

    def args(self, g: Grid) -> dict[str, Any]:
        self.static = self.static or g.static_order
        return gptq.layer_args(g)

    def rewrite(self) -> Callable[[str, np.ndarray], np.ndarray] | None:
        if not self._v1:
            return None
        bits = {m: self.quantized[m]["bits"] for m in self._v1}
        self._v1 = set()

        def to_v2(key: str, value: np.ndarray) -> np.ndarray:
            module, _, suffix = key.rpartition(".")
            if suffix != "qzeros" or module not in bits:
                return value
            b = bits[module]
            n = value.shape[1] * 32 // b
            return words((from_words(value, n, b) + 1).astype(np.uint8), b)

        return to_v2

    def quantization_config(self, float_linears: list[str]) -> dict[str, Any]:
        recipe = self.recipe
        return gptq.config(
            self.quantized,
            float_linears,
            checkpoint_format=self.version,
            damp=getattr(recipe, "damp", 0.01) if recipe is not None else 0.01,
            static_groups=self.static,
            lm_head="lm_head" in self.quantized,
        )


class AWQLayout(_Foreign):
    name = fmt = "awq"

    def encode(self, g: Grid, name: str) -> dict[str, np.ndarray]:
        self.encode_check(g, name)
        return awq.encode(g, name)

    def encode_check(self, g: Grid, name: str) -> None:
        """What AWQ refuses in one layer, and a group size unlike the layers before."""
        awq.check(g, name)
        if _module(name) == "lm_head":
            raise ValueError(
                "lm_head: AWQ loaders keep the LM head in float; leave it out of the recipe "
                "(the default ignore=('lm_head',)), or save with format='gptq' or "
                "'compressed-tensors'"
            )
        group_sizes = {a["group_size"] for a in self.quantized.values()}
        if group_sizes and g.group_size not in group_sizes:
            raise ValueError(
                f"{name}: AWQ checkpoints have one group_size for every layer; this one has "
                f"{g.group_size}, others {group_sizes.pop()}: quantize every layer with one "
                "group size, or save with format='gptq' or 'compressed-tensors'"
            )
        self.quantized[_module(name)] = self.args(g)

    def args(self, g: Grid) -> dict[str, Any]:
        return {"group_size": g.group_size}

    def quantization_config(self, float_linears: list[str]) -> dict[str, Any]:
        if not self.quantized:
            raise ValueError("no quantized linear to describe: quantize the model first")
        (gs,) = {a["group_size"] for a in self.quantized.values()}
        return awq.config(gs, float_linears)


class CompressedTensorsLayout(_Foreign):
    name = fmt = "compressed-tensors"

    def encode(self, g: Grid, name: str) -> dict[str, np.ndarray]:
        return ct.encode(g, name)

    def args(self, g: Grid) -> dict[str, Any]:
        return ct.layer_args(g)

    def quantization_config(self, float_linears: list[str]) -> dict[str, Any]:
        if not self.quantized:
            raise ValueError("no quantized linear to describe: quantize the model first")
        return ct.config(self.quantized, float_linears)


def layout(fmt: str, recipe: Any = None, **options: Any) -> Layout:
    """The layout of ``fmt`` (one of :data:`FORMATS`). ``options``: ``checkpoint_format``
    for GPTQ."""
    if fmt not in FORMATS:
        hint = (
            " (a GGUF file: model.save(path, format='gguf', type='Q4_K_M'))"
            if fmt == "gguf"
            else ""
        )
        raise ValueError(f"format {fmt!r}: pick one of {', '.join(FORMATS)}{hint}")
    allowed = {"gptq": {"checkpoint_format"}}.get(fmt, set())
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"format {fmt!r} takes no option {', '.join(sorted(unknown))}")
    if fmt == "gptq":
        return GPTQLayout(recipe, options.get("checkpoint_format"))
    if fmt == "awq":
        return AWQLayout(recipe)
    if fmt == "compressed-tensors":
        return CompressedTensorsLayout(recipe)
    return Layout(recipe)


# -- reading ---------------------------------------------------------------------------------


class Reader:
    """Which entries of a GPTQ / AWQ / compressed-tensors checkpoint make up each quantized
    linear, and how to decode them."""

    def __init__(self, qcfg: Mapping[str, Any]) -> None:
        method = qcfg.get("quant_method")
        self.method = method
        self.suffixes: tuple[str, ...]
        if method == "gptq":
            self.marker, self.suffixes = "qweight", gptq.SUFFIXES
            self.version = qcfg.get("checkpoint_format", "gptq") or "gptq"
            gptq._check_format(self.version)
            self._gptq = gptq.layer_reader(qcfg)
        elif method == "awq":
            self.marker, self.suffixes = "qweight", awq.SUFFIXES
            version = str(qcfg.get("version", "gemm")).lower()
            if version != "gemm":
                raise ValueError(
                    f"AWQ version {version!r}: qfast reads AWQ's GEMM layout ('gemm'); "
                    "GEMV / Marlin / exllama layouts differ"
                )
            bits = int(qcfg.get("w_bit", qcfg.get("bits", 4)))
            gs = int(qcfg.get("q_group_size", qcfg.get("group_size", 128)))
            self._awq = (bits, gs)
        elif method == "compressed-tensors":
            self.marker, self.suffixes = "weight_packed", ct.SUFFIXES
            fmt = qcfg.get("format")
            if fmt != "pack-quantized":
                raise ValueError(f"compressed-tensors format {fmt!r}: qfast reads 'pack-quantized'")
            self._ct = ct.layer_reader(qcfg)
        else:
            raise ValueError(f"quant_method {method!r} is not a format qfast reads")

    def shape(
        self, module: str, shapes: Mapping[str, tuple[int, ...]], raw: Any
    ) -> tuple[int, int]:
        """The logical ``[out, in]`` of ``module``'s weight, from its entries' shapes."""
        if self.method == "gptq":
            spec = self._spec_gptq(module)
            words_in, out = shapes[f"{module}.qweight"]
            return int(out), int(words_in) * 32 // spec[0]
        if self.method == "awq":
            n_in, w = shapes[f"{module}.qweight"]
            return int(w) * 8, int(n_in)
        dims = np.asarray(raw(f"{module}.weight_shape")).reshape(-1)
        return int(dims[0]), int(dims[1])

    def _spec_gptq(self, module: str) -> tuple[int, int]:
        spec = self._gptq(module)
        if spec is None:
            raise ValueError(
                f"{module}: the checkpoint stores it quantized, and its quantization_config's "
                "dynamic rules say it is not: the config and the weights disagree"
            )
        return spec

    def decode(self, module: str, arrays: Mapping[str, np.ndarray]) -> QTensor:
        name = f"{module}.weight"
        if self.method == "gptq":
            bits, gs = self._spec_gptq(module)
            return gptq.unpack(
                arrays, bits=bits, group_size=gs, checkpoint_format=self.version, name=name
            )
        if self.method == "awq":
            bits, gs = self._awq
            return awq.unpack(arrays, bits=bits, group_size=gs, name=name)
        args = self._ct(module)
        if args is None:
            raise ValueError(
                f"{module}: the checkpoint stores it quantized, and no config group targets "
                "it: the config and the weights disagree"
            )
        return ct.unpack(arrays, args=args, name=name)


def reader(config: Mapping[str, Any]) -> Reader | None:
    """The reader of a config.json's ``quantization_config``; ``None`` for a float or qfast
    checkpoint."""
    qcfg = config.get("quantization_config")
    if not isinstance(qcfg, Mapping) or qcfg.get("quant_method") not in _FOREIGN:
        return None
    return Reader(qcfg)


def check_plan(
    fmt: str, plan: Mapping[str, Any], shapes: Callable[[str], tuple[int, ...]], **options: Any
) -> None:
    """Refuses, before any work, a recipe whose layers ``fmt`` cannot hold.

    ``plan``: module -> its resolved :class:`~qfast.model.recipe.LayerSpec` (``None``: kept
    in float); ``shapes``: a weight's name -> its shape. The same checks as writing a layer,
    run on each layer's shape and settings."""
    lay = layout(fmt, None, **options)
    if lay.name == "qfast":
        return
    for module, spec in plan.items():
        if spec is None:
            continue
        name = f"{module}.weight"
        if spec.method in ("hqq", "w8a8"):
            why = (
                "its zero points are floats"
                if spec.method == "hqq"
                else "its activations are quantized at run time, and these formats store "
                "weight-only layers"
            )
            raise ValueError(
                f"{spec.method} cannot be written as {fmt} ({why}): save with format='qfast', "
                "or quantize with rtn, gptq or awq"
            )
        if fmt in ("gptq", "awq") and spec.scale_dtype != "float16":
            raise ValueError(
                f"{module}: {fmt} stores float16 scales, and the recipe computes the codes "
                f"against {spec.scale_dtype} ones: pass scale_dtype='float16'"
            )
        out, n_in = shapes(name)
        n_groups = 1 if spec.group_size is None else -(-n_in // spec.group_size)
        act = spec.act_order and spec.group_size is not None
        g = Grid(
            codes=np.broadcast_to(np.uint8(0), (out, n_in)),
            zeros=np.zeros((1, 1), np.int32),
            scales=np.ones((out, n_groups), np.float16),
            bits=spec.bits,
            group_size=spec.group_size,
            g_idx=np.zeros(n_in, np.int32) if act else None,
        )
        if isinstance(lay, GPTQLayout):
            gptq.check(g, name)
        elif isinstance(lay, AWQLayout):
            lay.encode_check(g, name)
        else:
            ct.check(g, name)

"""``qfast.Recipe``: how to quantize a model's linears, as data that round-trips through JSON.

A recipe names a method and its grid, and per-module overrides by name pattern::

    recipe = qfast.Recipe(
        "gptq", bits=4, group_size=64, symmetric=False,
        overrides={"*.down_proj": {"bits": 8}, "model.layers.0.*": None},
    )
    recipe.to_json()                  # saved beside the quantized model as recipe.json
    qfast.Recipe.from_json(text)      # the same recipe

Methods:

- ``rtn``: round-to-nearest on the GPTQ reference grid (no calibration);
- ``gptq``: GPTQ with a Hessian per shared input, block by block;
- ``awq``: AWQ's scale search, folded into the previous operation, then AutoAWQ's grid;
- ``hqq``: HQQ's proximal zero points (asymmetric; no calibration);
- ``w8a8``: RTN weights (default 8-bit per-channel symmetric) with activations quantized to
  INT8 per token at run time (the model computes with ``compute="int8"``).

What is quantized: every linear of the blocks, except the modules in ``ignore`` (by default
``lm_head``; embeddings and norms are not linears and always keep their precision, as the
seeds advise). ``overrides`` maps a pattern to the fields that change for the modules it
matches, or to ``None`` to keep them in float. Patterns are ``fnmatch`` globs over module names
(``"*.mlp.down_proj"``), or regular expressions after ``re:`` (``"re:layers\\.[0-3]\\."``,
searched), as llm-compressor writes them. A module's settings are the recipe's, then each
matching ``ignore`` pattern (as ``None``), then each matching override in order; a later
match wins, so an override can bring an ignored module back (``{"lm_head": {"bits": 8}}``).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .._checks import as_bool, check_bits

__all__ = ["METHODS", "LayerSpec", "Recipe"]

#: The methods a recipe may name.
METHODS = ("rtn", "gptq", "awq", "hqq", "w8a8")
#: Methods that learn from calibration data (the others only read the weights).
CALIBRATED = ("gptq", "awq")
#: Fields an override may change.
OVERRIDABLE = (
    "bits",
    "group_size",
    "symmetric",
    "act_order",
    "static_groups",
    "damp",
    "mse",
    "scale_dtype",
)
_SCALE_DTYPES = ("float32", "float16", "bfloat16")
#: Scale dtypes a method computes its grid in (hqq finds float32 scales).
_METHOD_SCALE_DTYPES = {
    "rtn": _SCALE_DTYPES,
    "gptq": _SCALE_DTYPES,
    "w8a8": _SCALE_DTYPES,
    "awq": _SCALE_DTYPES,
    "hqq": ("float32",),
}
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerSpec:
    """One module's resolved settings (the recipe with its matching overrides applied)."""

    method: str
    bits: int
    group_size: int | None
    symmetric: bool
    act_order: bool
    damp: float
    scale_dtype: str
    mse: bool = False
    static_groups: bool = False


@dataclass(frozen=True)
class Recipe:
    """How to quantize a model (see the module's docstring).

    Args:
        method: ``"rtn"``, ``"gptq"``, ``"awq"``, ``"hqq"`` or ``"w8a8"``.
        bits: code width, 2 to 8 (``w8a8``: default 8).
        group_size: one grid per this many input columns; ``None`` for one per output row
            (per-channel). Default 128 (``w8a8``: per-channel).
        symmetric: signed grid around zero (default True; ``hqq`` and the AWQ paper's setting
            are asymmetric: ``hqq`` requires False).
        act_order: GPTQ's ``desc_act``: columns by decreasing Hessian diagonal.
        static_groups: GPTQ with groups: every group's grid is fixed on the original column
            order before the (act-order) column loop, so each column stays in group
            ``i // group_size`` and no ``g_idx`` permutation is stored (AutoGPTQ's
            ``static_groups``; "static activation ordering", which current vLLM requires:
            it refuses act-order checkpoints with a permuted ``g_idx``). No effect per
            channel.
        damp: GPTQ's ``percdamp``, a fraction of the Hessian's mean diagonal.
        mse: rtn / gptq: the reference's MSE grid search (each group's range shrunk to the
            least ``Σ|q - x|^2.4``) instead of min / max.
        scale_dtype: the dtype scales are stored in, which the codes are computed against:
            ``"float16"`` (the default for rtn / gptq / awq / w8a8, as GPTQ and AWQ
            checkpoints store them, so an export loses nothing), ``"float32"`` (the default,
            and the only choice, for hqq), or ``"bfloat16"``.
        ignore: module patterns kept in float (default ``("lm_head",)``).
        overrides: pattern -> fields to change (``bits``, ``group_size``, ``symmetric``,
            ``act_order``, ``damp``, ``scale_dtype``), or ``None`` to keep those modules in
            float.

    Raises:
        ValueError: an unknown method or field, a bad value, or a combination the method
            cannot run (the message says which).
    """

    method: str = "gptq"
    bits: int | None = None
    group_size: int | str | None = "default"
    symmetric: bool | None = None
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    mse: bool = False
    scale_dtype: str | None = None
    ignore: tuple[str, ...] = ("lm_head",)
    overrides: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = self.method.lower() if isinstance(self.method, str) else self.method
        if method not in METHODS:
            raise ValueError(f"Recipe: unknown method {self.method!r}; pass one of {METHODS}")
        set_ = object.__setattr__
        set_(self, "method", method)
        w8a8 = method == "w8a8"
        bits = self.bits if self.bits is not None else 8 if w8a8 else 4
        set_(self, "bits", check_bits(bits))
        if self.group_size == "default":
            set_(self, "group_size", None if w8a8 else 128)
        if self.symmetric is None:
            set_(self, "symmetric", method != "hqq")
        if self.scale_dtype is None:
            set_(self, "scale_dtype", "float32" if method == "hqq" else "float16")
        if isinstance(self.ignore, str):
            set_(self, "ignore", (self.ignore,))
        set_(self, "ignore", tuple(self.ignore))
        for pattern in self.ignore:
            _matcher(pattern)
        if not isinstance(self.overrides, Mapping):
            raise TypeError(
                f"Recipe: overrides must map a module pattern to fields (or None), not "
                f"{type(self.overrides).__name__}"
            )
        overrides: dict[str, dict[str, Any] | None] = {}
        for pattern, change in self.overrides.items():
            _matcher(pattern)
            if change is None:
                overrides[pattern] = None
                continue
            if not isinstance(change, Mapping):
                raise TypeError(
                    f"Recipe: override {pattern!r} must be a dict of fields or None, not "
                    f"{type(change).__name__}"
                )
            unknown = sorted(set(change) - set(OVERRIDABLE))
            if unknown:
                raise ValueError(
                    f"Recipe: override {pattern!r} sets {', '.join(unknown)}; an override may "
                    f"change {', '.join(OVERRIDABLE)} (the method is the recipe's)"
                )
            overrides[pattern] = dict(change)
        set_(self, "overrides", overrides)
        # Every combination the overrides can produce is checked now, not mid-run.
        self._spec(self._base())
        for change in overrides.values():
            if change is not None:
                self._spec({**self._base(), **change}, "an override")

    # -- resolution ----------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OVERRIDABLE}

    def _spec(self, values: dict[str, Any], where: str = "the recipe") -> LayerSpec:
        bits = check_bits(values["bits"])
        group = values["group_size"]
        if group is not None and (
            isinstance(group, bool) or not isinstance(group, int) or group < 1
        ):
            raise ValueError(f"Recipe: {where}'s group_size must be a positive int or None")
        symmetric = as_bool(values["symmetric"], "symmetric")
        act_order = as_bool(values["act_order"], "act_order")
        damp = values["damp"]
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
            raise ValueError(f"Recipe: {where}'s damp must be a positive number, got {damp!r}")
        sdtype = values["scale_dtype"]
        allowed = _METHOD_SCALE_DTYPES[self.method]
        if sdtype not in allowed:
            raise ValueError(
                f"Recipe: {where}'s scale_dtype {sdtype!r}: {self.method} takes "
                f"{', '.join(allowed)}"
            )
        if self.method == "hqq" and symmetric:
            raise ValueError("Recipe: hqq's grid is asymmetric; pass symmetric=False")
        if self.method == "w8a8" and group is not None:
            raise ValueError(
                "Recipe: w8a8 quantizes weights per channel (group_size=None): the int8 "
                "kernels apply one scale per output row"
            )
        if act_order and self.method != "gptq":
            raise ValueError(f"Recipe: act_order is GPTQ's; {self.method} does not take it")
        static = as_bool(values["static_groups"], "static_groups")
        if static and self.method != "gptq":
            raise ValueError(f"Recipe: static_groups is GPTQ's; {self.method} does not take it")
        static = static and group is not None  # one grid per row is fixed anyway
        mse = as_bool(values["mse"], "mse")
        if mse and self.method not in ("rtn", "gptq"):
            raise ValueError(
                f"Recipe: mse is the GPTQ grid's search (rtn, gptq), not {self.method}'s"
            )
        return LayerSpec(
            self.method, bits, group, symmetric, act_order, float(damp), sdtype, mse, static
        )

    def resolve(self, module: str) -> LayerSpec | None:
        """The settings for the linear ``module`` (``None``: it stays in float)."""
        values: dict[str, Any] | None = self._base()
        for pattern in self.ignore:
            if _matcher(pattern)(module):
                values = None
        for pattern, change in self.overrides.items():
            if _matcher(pattern)(module):
                values = None if change is None else {**(values or self._base()), **change}
        return None if values is None else self._spec(values)

    @property
    def calibrated(self) -> bool:
        """Whether the method learns from calibration data (gptq, awq)."""
        return self.method in CALIBRATED

    @property
    def compute(self) -> str:
        """How the quantized model runs its linears: ``"int8"`` activations for w8a8,
        ``"float"`` (dequantized weights) for the weight-only methods."""
        return "int8" if self.method == "w8a8" else "float"

    def describe(self) -> str:
        """A one-line summary, e.g. ``gptq INT4 asymmetric g64``."""
        gran = "per-channel" if self.group_size is None else f"g{self.group_size}"
        sym = "symmetric" if self.symmetric else "asymmetric"
        extra = (" act-order" if self.act_order else "") + (" mse" if self.mse else "")
        extra += " static-groups" if self.static_groups else ""
        acts = " + INT8 activations" if self.method == "w8a8" else ""
        return f"{self.method} INT{self.bits} {sym} {gran}{extra}{acts}"

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"qfast_recipe": _FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if f.name == "ignore" else value
        out["overrides"] = {k: None if v is None else dict(v) for k, v in self.overrides.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        if not isinstance(d, Mapping):
            raise TypeError(f"Recipe.from_dict takes a dict, not {type(d).__name__}")
        data = dict(d)
        version = data.pop("qfast_recipe", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"recipe format version {version!r}; this qfast reads version {_FORMAT_VERSION} "
                "(upgrade qfast to read newer recipes)"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"Recipe: unknown field(s) {', '.join(unknown)}; a recipe has "
                f"{', '.join(sorted(names))}"
            )
        if "ignore" in data and data["ignore"] is not None:
            data["ignore"] = tuple(data["ignore"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"a recipe must be JSON: {e}") from None
        return cls.from_dict(data)


_MATCHERS: dict[str, Any] = {}


def _matcher(pattern: Any) -> Any:
    """A predicate module name -> bool for an fnmatch glob, or a regex after ``re:``."""
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"Recipe: a module pattern must be a non-empty str, not {pattern!r}")
    m = _MATCHERS.get(pattern)
    if m is None:
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as e:
                raise ValueError(f"Recipe: pattern {pattern!r} is not a valid regex: {e}") from None
        else:
            rx = re.compile(fnmatch.translate(pattern))
            m = _MATCHERS[pattern] = rx.match
            return m
        m = _MATCHERS[pattern] = rx.search
    return m

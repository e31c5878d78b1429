"""The ``quantization_config`` that ``model.save(path, format=...)`` writes carries every key
that transformers' and vLLM's loaders read, with the meaning they give it.

The key lists and the matching rules below were read in the released sources and written
out here by hand (never taken from qfast):

- transformers 5.25.0: ``transformers/utils/quantization_config.py`` (``GPTQConfig``,
  ``AwqConfig``, ``CompressedTensorsConfig``), ``transformers/quantizers/quantizer_gptq.py``,
  ``quantizer_awq.py``, ``quantizer_compressed_tensors.py``, ``quantizers/auto.py``,
  ``quantizers/quantizers_utils.py`` (``should_convert_module``), ``integrations/awq.py``;
- optimum 2.3.0 (transformers' GPTQ loader delegates to it): ``optimum/gptq/quantizer.py``;
- compressed-tensors 0.20.1: ``compressed_tensors/quantization/quant_config.py``,
  ``quant_scheme.py``, ``quant_args.py``, ``utils/match.py``;
- vLLM 0.34.0: ``vllm/model_executor/layers/quantization/auto_gptq.py``, ``auto_awq.py``,
  ``base_config.py``, ``utils/gptq_utils.py``, ``utils/quant_utils.py``,
  ``utils/config_utils.py``, ``compressed_tensors/compressed_tensors.py``,
  ``compressed_tensors/utils.py``, ``compressed_tensors/schemes/compressed_tensors_wNa16.py``;
- vLLM 0.20.2 (the last release with the classic files): ``gptq.py`` (``GPTQConfig``,
  checkpoint_format / gptq_v2 from PR #26092), ``gptq_marlin.py``, ``awq.py``, ``awq_marlin.py``.

Each loader is modelled by the few lines that read the config (``*_reads``) and by the rule
that decides, per linear, whether it is built quantized (``*_quantized``). A checkpoint passes
when every loader finds its required keys, their values mean what the tensors hold, and every
loader builds exactly the linears the safetensors files store quantized.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
from test_checkpoint import TINY, write_folder
from test_llama import make_tensors

import qfast
from qfast.formats import canonical

# A 2-block Llama with GQA whose widths groups of 32 divide and every packing tiles
# (in, out in {64, 128, 32}: 3-bit words need multiples of 32).
CFG = {
    **TINY,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
}
SAMPLES, SEQ = 8, 32
IDS = np.random.default_rng(7).integers(0, CFG["vocab_size"], (SAMPLES, SEQ))
DOWN0 = "model.layers.0.mlp.down_proj"

# vLLM's Llama (models/llama.py ``LlamaForCausalLM.packed_modules_mapping``) builds one layer
# for q/k/v and one for gate/up; every quantization config is asked about those fused names.
PACKED_MODULES_MAPPING = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}
# The vLLM class of each layer (compressed-tensors targets may name a class).
VLLM_CLASS = {
    "qkv_proj": "QKVParallelLinear",
    "o_proj": "RowParallelLinear",
    "gate_up_proj": "MergedColumnParallelLinear",
    "down_proj": "RowParallelLinear",
    "lm_head": "ParallelLMHead",
}
# vLLM's ``maybe_update_config`` (auto_gptq.py / auto_awq.py, 0.34.0): a parameter whose
# safetensors dtype is not one of these is "quantized".
UNQUANT_DTYPES = ("F16", "BF16", "F32")

# -- the key lists ---------------------------------------------------------------------------

# vLLM 0.34.0 auto_gptq.py AutoGPTQConfig.from_config:
#   weight_bits = cls.get_from_keys(config, ["bits"]); group_size = ...["group_size"];
#   desc_act = ...["desc_act"]; is_sym = cls.get_from_keys(config, ["sym"])
# vLLM 0.20.2 gptq_marlin.py GPTQMarlinConfig.from_config: the same four, and
# is_gptq_marlin_compatible: "if num_bits is None or group_size is None or sym is None or
# desc_act is None: return False".  vLLM 0.20.2 gptq.py GPTQConfig.from_config: bits,
# group_size, desc_act.  get_from_keys (base_config.py) raises ValueError when none is found.
VLLM_GPTQ_REQUIRED = ("bits", "group_size", "desc_act", "sym")
# vLLM 0.20.2 gptq.py GPTQConfig.from_config: "checkpoint_format = cls.get_from_keys_or(config,
# ['checkpoint_format'], default='')" and GPTQLinearMethod: "self.use_v2_format =
# quant_config.checkpoint_format == 'gptq_v2'"; both generations: get_from_keys_or for
# "dynamic" (default {}), "lm_head" (default False), "modules_in_block_to_quantize" (None).
VLLM_GPTQ_OPTIONAL = ("checkpoint_format", "dynamic", "lm_head", "modules_in_block_to_quantize")
# transformers utils/quantization_config.py GPTQConfig.__init__(self, bits, ..., group_size=128,
# damp_percent=0.1, desc_act=False, act_group_aware=True, sym=True, true_sequential=True,
# format="gptq", meta=None, ..., modules_in_block_to_quantize=None, **kwargs);
# "self.format = kwargs.pop('checkpoint_format').lower()". bits has no default; the defaults of
# group_size / desc_act / sym / format are not qfast's, so every one must be written.
TRANSFORMERS_GPTQ_REQUIRED = ("bits",)
TRANSFORMERS_GPTQ_READ = (
    "bits",
    "group_size",
    "damp_percent",
    "desc_act",
    "sym",
    "true_sequential",
    "checkpoint_format",
    "modules_in_block_to_quantize",
)
# The issue's list (GPTQ bullet "config.json quantization_config: ...").
ISSUE_GPTQ_KEYS = (
    "quant_method",
    "bits",
    "group_size",
    "desc_act",
    "sym",
    "damp_percent",
    "true_sequential",
    "static_groups",
    "checkpoint_format",
)

# vLLM 0.34.0 auto_awq.py AutoAWQConfig.from_config (and 0.20.2 awq.py AWQConfig.from_config):
#   weight_bits = cls.get_from_keys(config, ["w_bit", "bits"])
#   group_size = cls.get_from_keys(config, ["q_group_size", "group_size"])
#   zero_point = cls.get_from_keys(config, ["zero_point"])
#   modules_to_not_convert = cls.get_from_keys_or(config, ["modules_to_not_convert"], None)
VLLM_AWQ_REQUIRED = (("w_bit", "bits"), ("q_group_size", "group_size"), ("zero_point",))
# vLLM 0.20.2 awq_marlin.py AWQMarlinConfig.from_config reads only the long names:
#   weight_bits = cls.get_from_keys(config, ["bits"]); group_size = ...["group_size"];
#   zero_point = ...["zero_point"]
VLLM_AWQ_MARLIN_REQUIRED = ("bits", "group_size", "zero_point")
# transformers AwqConfig.__init__(self, bits=4, group_size=128, zero_point=True,
# backend=AUTO, modules_to_not_convert=None, **kwargs); "format = kwargs.pop('version')";
# w_bit / q_group_size fall into **kwargs and are never read.
TRANSFORMERS_AWQ_READ = ("bits", "group_size", "zero_point", "version", "modules_to_not_convert")
ISSUE_AWQ_KEYS = ("quant_method", "bits", "w_bit", "group_size", "q_group_size", "zero_point")
AWQ_FORMATS = ("gemm", "gemv", "gemv_fast", "llm-awq")  # transformers AwqFormat

# compressed-tensors 0.20.1 quant_config.py QuantizationConfig: config_groups (no default),
# quant_method, kv_cache_scheme, format (default "fakequant"), quantization_status (default
# "initialized"), global_compression_ratio, ignore.  vLLM CompressedTensorsConfig.from_config:
# config.get("ignore", []), config.get("format"), config.get("config_groups", dict()),
# config.get("kv_cache_scheme"), config.get("transform_config"); transformers
# CompressedTensorsConfig.is_quantization_compressed: "qc.quantization_status ==
# QuantizationStatus.COMPRESSED" (else the packed tensors have no module to land in).
CT_REQUIRED = ("quant_method", "format", "quantization_status", "config_groups", "ignore")
# quant_scheme.py QuantizationScheme (model_config = ConfigDict(extra="forbid")).
CT_SCHEME_FIELDS = ("targets", "weights", "input_activations", "output_activations", "format")
# quant_args.py QuantizationArgs (model_config = ConfigDict(extra="forbid")).
CT_ARGS_FIELDS = (
    "num_bits",
    "type",
    "symmetric",
    "group_size",
    "strategy",
    "block_structure",
    "dynamic",
    "actorder",
    "scale_dtype",
    "zp_dtype",
    "observer",
    "observer_kwargs",
)
# quant_args.py ActivationOrdering: WEIGHT = "weight" (alias "static"), GROUP = "group" (alias
# "dynamic").  0.20.1 rejects "group"/"dynamic"/True; vLLM 0.20.2 reads "group" as "a
# weight_g_idx tensor is stored" (compressed_tensors_wNa16.py: "self.has_g_idx = actorder ==
# ActivationOrdering.GROUP").
CT_ACTORDER = (None, "weight", "static", "group", "dynamic")
ISSUE_CT_KEYS = ("quant_method", "format", "quantization_status", "config_groups", "ignore")


# -- the checkpoint --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("llama") / "float", make_tensors(CFG, 3), CFG)


def quantized(folder: Path, recipe: qfast.Recipe) -> Any:
    model = qfast.load_model(folder, compute="float")
    return qfast.quantize_model(model, recipe, IDS, samples=SAMPLES, seq_len=SEQ)


def header(path: Path) -> dict[str, dict[str, Any]]:
    """A safetensors file's header (name -> dtype, shape), read from its definition: an
    8-byte little-endian length, then that much JSON."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
    head.pop("__metadata__", None)
    return head


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        self.qcfg = self.config["quantization_config"]
        self.meta: dict[str, dict[str, Any]] = {}
        self.file: dict[str, Path] = {}
        for f in sorted(path.glob("*.safetensors")):
            for name, info in header(f).items():
                self.meta[name] = info
                self.file[name] = f

    def tensor(self, name: str) -> np.ndarray:
        with safetensors.safe_open(str(self.file[name]), framework="numpy") as f:
            return f.get_tensor(name)

    def quantized_modules(self) -> set[str]:
        """Modules with a parameter stored in a non-float dtype (vLLM's own inference)."""
        return {
            n.rsplit(".", 1)[0] for n, i in self.meta.items() if i["dtype"] not in UNQUANT_DTYPES
        }


def save(model: Any, path: Path, fmt: str, **opts: Any) -> Checkpoint:
    model.save(path, format=fmt, **opts)
    return Checkpoint(path)


def expected_quantized(model: Any) -> dict[str, Any]:
    """linear name -> its LayerSpec, from the recipe (independent of the writer)."""
    out = {}
    for name in model.linear_names():
        spec = model.recipe.resolve(name)
        if spec is not None:
            out[name] = spec
    return out


def vllm_layers(linears: list[str]) -> dict[str, list[str]]:
    """vLLM layer name -> the checkpoint modules it loads (shards in mapping order)."""
    out: dict[str, list[str]] = {}
    for name in linears:
        parent, _, proj = name.rpartition(".")
        for fused, shards in PACKED_MODULES_MAPPING.items():
            if proj in shards:
                out.setdefault(f"{parent}.{fused}", []).append(name)
                break
        else:
            out[name] = [name]
    return out


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- GPTQ: the loaders ---------------------------------------------------------------------


def get_from_keys(config: dict[str, Any], keys: tuple[str, ...] | list[str]) -> Any:
    """vLLM base_config.py QuantizationConfig.get_from_keys."""
    for key in keys:
        if key in config:
            return config[key]
    raise ValueError(f"Cannot find any of {keys} in the model's quantization config.")


def get_dynamic_override(
    dynamic: dict[str, Any], layer_name: str, key: str | None = None, default: Any = None
) -> Any:
    """vLLM utils/gptq_utils.py get_dynamic_override (0.20.2 and 0.34.0 alike)."""
    for pattern, pattern_dict in dynamic.items():
        if pattern.startswith("-:"):
            if re.match(pattern.removeprefix("-:"), layer_name):
                return False
        elif re.match(pattern.removeprefix("+:"), layer_name):
            if key is None:
                return pattern_dict
            return pattern_dict.get(key, default)
    return default


def flatten(x: Any) -> list[str]:
    if isinstance(x, list):
        return [s for item in x for s in flatten(item)]
    return [x]


def vllm_gptq_layer(
    qcfg: dict[str, Any], ckpt: Checkpoint, layer: str, shards: list[str]
) -> dict[str, Any] | None:
    """What vLLM builds for one (possibly fused) layer: None = unquantized, else the
    per-layer args after ``dynamic`` (gptq_utils.py get_linear_quant_method, override_config,
    is_layer_gptq_quantized; auto_gptq.py maybe_update_config)."""
    base = {k: get_from_keys(qcfg, [k]) for k in VLLM_GPTQ_REQUIRED}
    dynamic = qcfg.get("dynamic") or {}
    in_block = qcfg.get("modules_in_block_to_quantize")
    quantized_layers = flatten(in_block) if in_block else sorted(ckpt.quantized_modules())
    # the shards' names are prefix.replace(proj_name, shard_proj_name), i.e. ``shards``
    states = {any(q in s for q in quantized_layers) for s in shards}
    assert len(states) == 1, f"vLLM: 'Detected some but not all shards of {layer} are quantized'"
    if get_dynamic_override(dynamic, layer) is False or not states.pop():
        return None
    out = dict(base)
    for key in ("bits", "group_size", "desc_act", "sym"):
        value = get_dynamic_override(dynamic, layer, key, out[key])
        out[key] = value
    if out["desc_act"] and out["group_size"] == -1:
        out["desc_act"] = False  # "act_order == True is the same as act_order == False"
    return out


def optimum_gptq_quantized(qcfg: dict[str, Any], block_linears: list[str]) -> set[str]:
    """optimum gptq/quantizer.py GPTQQuantizer.convert_model: the block linears it replaces
    by QuantLinear (it never reads ``dynamic``)."""
    layers = set(block_linears)
    m = qcfg.get("modules_in_block_to_quantize")
    if m is not None:
        layers_to_keep = sum(m, [])  # noqa: RUF017 (as optimum: a flat list of str is a TypeError)
        layers = {n for n in layers if any(n.endswith(layer) for layer in layers_to_keep)}
    return layers


def transformers_gptq(qcfg: dict[str, Any]) -> dict[str, Any]:
    """transformers GPTQConfig(**qcfg): the values it keeps and post_init's checks."""
    if "bits" not in qcfg:
        raise TypeError("GPTQConfig.__init__() missing 1 required positional argument: 'bits'")
    c = {
        "bits": qcfg["bits"],
        "group_size": qcfg.get("group_size", 128),
        "damp_percent": qcfg.get("damp_percent", 0.1),
        "desc_act": qcfg.get("desc_act", False),
        "sym": qcfg.get("sym", True),
        "format": str(qcfg.get("format", "gptq")).lower(),
    }
    if qcfg.get("checkpoint_format") is not None:
        c["format"] = qcfg["checkpoint_format"].lower()
    if c["bits"] not in [2, 3, 4, 8]:
        raise ValueError(f"Only support quantization to [2,3,4,8] bits but found {c['bits']}")
    if c["group_size"] != -1 and c["group_size"] <= 0:
        raise ValueError("group_size must be greater than 0 or equal to -1")
    if not (0 < c["damp_percent"] < 1):
        raise ValueError("damp_percent must between 0 and 1.")
    return c


def g_idx_is_trivial(g_idx: np.ndarray, group_size: int) -> bool:
    n = g_idx.size
    gs = n if group_size == -1 else group_size
    return bool(np.array_equal(g_idx, np.arange(n) // gs))


def unpack_rows(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """[rows, words] int32 -> [rows, n] codes, each row one little-endian bit stream (the
    definition of AutoGPTQ's qzeros layout; 4- and 8-bit only here)."""
    assert bits in (4, 8)
    per = 32 // bits
    u = words.astype(np.int64) & 0xFFFFFFFF
    fields = [(u >> (bits * k)) & ((1 << bits) - 1) for k in range(per)]
    return np.stack(fields, axis=-1).reshape(words.shape[0], -1)[:, :n]


def check_gptq(model: Any, ckpt: Checkpoint, want_format: str | None) -> None:
    q = ckpt.qcfg
    want = expected_quantized(model)
    blocks = [n for n in model.linear_names() if n.startswith("model.layers.")]
    stored = {n for n in model.linear_names() if n + ".qweight" in ckpt.meta}
    assert stored == set(want), "the checkpoint's quantized linears are the recipe's"

    # every key the issue names and the loaders read, with the right type
    for key in ISSUE_GPTQ_KEYS + VLLM_GPTQ_REQUIRED + TRANSFORMERS_GPTQ_REQUIRED:
        assert key in q, f"gptq quantization_config lacks {key!r}"
    assert q["quant_method"] == "gptq"
    assert is_int(q["bits"]) and q["bits"] in (2, 3, 4, 8)
    assert is_int(q["group_size"]) and (q["group_size"] == -1 or q["group_size"] > 0)
    for key in ("desc_act", "sym", "true_sequential", "static_groups"):
        assert is_bool(q[key]), f"{key} is {q[key]!r}, not a bool"
    assert isinstance(q["damp_percent"], float) and 0 < q["damp_percent"] < 1
    assert q["damp_percent"] == pytest.approx(model.recipe.damp)
    assert q["checkpoint_format"] in ("gptq", "gptq_v2")
    if want_format is not None:
        assert q["checkpoint_format"] == want_format
    if "format" in q:  # transformers: checkpoint_format wins, GPTQModel reads format
        assert q["format"] == q["checkpoint_format"]
    if "lm_head" in q:
        assert is_bool(q["lm_head"]) and q["lm_head"] == ("lm_head" in want)
    t = transformers_gptq(q)
    assert t["format"] == q["checkpoint_format"]

    # vLLM (fused layers, dynamic rules, modules_in_block_to_quantize or the dtypes) builds a
    # quantized layer exactly where the checkpoint has one, with that layer's own args
    for layer, shards in vllm_layers(blocks).items():
        got = vllm_gptq_layer(q, ckpt, layer, shards)
        specs = {want.get(s) for s in shards}
        assert len(specs) == 1, f"{layer}: shards quantized differently; vLLM cannot load it"
        spec = specs.pop()
        if spec is None:
            assert got is None, f"vLLM would build {layer} quantized; it is stored in float"
            continue
        assert got is not None, f"vLLM would build {layer} unquantized; it is stored quantized"
        gs = -1 if spec.group_size is None else spec.group_size
        assert got["bits"] == spec.bits, layer
        assert got["group_size"] == gs, layer
        assert got["sym"] == spec.symmetric, layer
        n_in = ckpt.meta[shards[0] + ".g_idx"]["shape"][0]
        assert n_in % (n_in if gs == -1 else gs) == 0  # gptq.py create_weights' alignment
        permuted = any(not g_idx_is_trivial(ckpt.tensor(s + ".g_idx"), gs) for s in shards)
        # desc_act False makes the exllama path drop g_idx (gptq.py: g_idx = empty)
        assert got["desc_act"] == permuted, f"{layer}: desc_act {got['desc_act']}"
    # transformers / optimum: the same set of block linears, one set of args for all
    assert optimum_gptq_quantized(q, blocks) == {n for n in blocks if n in want}, (
        "optimum replaces these block linears by QuantLinear: "
        f"{sorted(optimum_gptq_quantized(q, blocks) ^ {n for n in blocks if n in want})} "
        "differ from the checkpoint (it reads modules_in_block_to_quantize, not dynamic)"
    )


def check_gptq_zeros(model: Any, ckpt: Checkpoint) -> None:
    """checkpoint_format says what the qzeros hold: v1 zero - 1, v2 the zero (the "!!!"
    of vllm #26343 was a v2 checkpoint read as v1)."""
    q = ckpt.qcfg
    v1 = q["checkpoint_format"] == "gptq"
    for name in expected_quantized(model):
        qt = canonical(model.weights[name + ".weight"])
        zero = np.asarray(qt.zero_point).reshape(qt.shape[0], -1).T  # [groups, out]
        stored = unpack_rows(ckpt.tensor(name + ".qzeros"), qt.bits, qt.shape[0])
        mask = (1 << qt.bits) - 1
        np.testing.assert_array_equal(stored, (zero - 1) & mask if v1 else zero, err_msg=name)


GPTQ_CASES = {
    "rtn4-sym-g32-v1": (qfast.Recipe("rtn", bits=4, group_size=32), {}, "gptq"),
    "gptq4-asym-actorder-v2": (
        qfast.Recipe("gptq", bits=4, group_size=32, symmetric=False, act_order=True),
        {"checkpoint_format": "gptq_v2"},
        "gptq_v2",
    ),
    "rtn8-channel": (qfast.Recipe("rtn", bits=8, group_size=None), {}, "gptq"),
    "rtn3-asym": (qfast.Recipe("rtn", bits=3, group_size=32, symmetric=False), {}, None),
    "rtn2-sym": (qfast.Recipe("rtn", bits=2, group_size=32), {}, None),
}


@pytest.mark.parametrize("case", list(GPTQ_CASES))
def test_gptq_config_has_every_key_the_loaders_read(case: str, folder: Path, tmp_path: Path):
    recipe, opts, want_format = GPTQ_CASES[case]
    model = quantized(folder, recipe)
    ckpt = save(model, tmp_path / "gptq", "gptq", **opts)
    check_gptq(model, ckpt, want_format)
    assert ckpt.qcfg["bits"] == recipe.bits
    assert ckpt.qcfg["sym"] is recipe.symmetric
    assert ckpt.qcfg["desc_act"] is recipe.act_order
    assert ckpt.qcfg["group_size"] == (-1 if recipe.group_size is None else recipe.group_size)
    if recipe.bits in (4, 8):
        check_gptq_zeros(model, ckpt)


# Recipe overrides keeping block linears in float: one unfused linear, and a whole fused group
# (vLLM's qkv_proj); a part of a fused group is not loadable by vLLM in any format.
FLOAT_OVERRIDES = {
    "down0": {DOWN0: None},
    "qkv0": {"model.layers.0.self_attn.[qkv]_proj": None},
}


@pytest.mark.parametrize("case", list(FLOAT_OVERRIDES))
def test_gptq_float_linear_in_a_block_is_declared(case: str, folder: Path, tmp_path: Path):
    """A recipe override keeping block linears in float: GPTQModel and vLLM skip them (a "-:"
    dynamic rule; vLLM also modules_in_block_to_quantize, or the stored dtypes), and so do
    transformers / optimum, which read only modules_in_block_to_quantize (a list of lists,
    matched with name.endswith)."""
    recipe = qfast.Recipe("rtn", bits=4, group_size=32, overrides=FLOAT_OVERRIDES[case])
    model = quantized(folder, recipe)
    ckpt = save(model, tmp_path / "gptq", "gptq")
    want = expected_quantized(model)
    dynamic = ckpt.qcfg.get("dynamic") or {}
    for name in model.linear_names():
        if name.startswith("model.layers."):  # GPTQModel matches the module names
            skipped = get_dynamic_override(dynamic, name) is False
            assert skipped == (name not in want), f"{name}: '-:' rule {skipped}"
    m = ckpt.qcfg.get("modules_in_block_to_quantize")
    assert isinstance(m, list) and all(isinstance(x, list) for x in m), (
        "modules_in_block_to_quantize (list of lists of names) is missing: transformers / "
        "optimum (gptq/quantizer.py convert_model) do not read 'dynamic' and would build "
        f"{sorted(set(model.linear_names()) - set(want) - {'lm_head'})} as QuantLinear"
    )
    check_gptq(model, ckpt, "gptq")


def test_gptq_per_layer_args_reach_vllm_fused_layers(folder: Path, tmp_path: Path) -> None:
    """Per-layer overrides (dynamic "+:" rules) are matched by vLLM against its fused layer
    names (model.layers.1.self_attn.qkv_proj), not against q_proj / k_proj / v_proj."""
    recipe = qfast.Recipe(
        "rtn",
        bits=4,
        group_size=32,
        overrides={"model.layers.1.self_attn.*": {"bits": 8}, "*.down_proj": {"group_size": None}},
    )
    model = quantized(folder, recipe)
    ckpt = save(model, tmp_path / "gptq", "gptq")
    blocks = [n for n in model.linear_names() if n.startswith("model.layers.")]
    want = expected_quantized(model)
    for layer, shards in vllm_layers(blocks).items():
        got = vllm_gptq_layer(ckpt.qcfg, ckpt, layer, shards)
        spec = want[shards[0]]
        assert got is not None and got["bits"] == spec.bits, (
            f"vLLM builds {layer} with {got and got['bits']} bits; its shards hold {spec.bits}"
        )
        assert got["group_size"] == (-1 if spec.group_size is None else spec.group_size), layer


# -- AWQ -----------------------------------------------------------------------------------


def should_convert_module(full_name: str, patterns: list[str] | None) -> bool:
    """transformers quantizers/quantizers_utils.py should_convert_module."""
    if patterns is None:
        return True
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return not any(
        re.match(rf"(?:{key}){boundary}", full_name) or full_name.endswith(key) for key in patterns
    )


def vllm_awq_skipped(qcfg: dict[str, Any], ckpt: Checkpoint, layer: str, shards: list[str]) -> bool:
    """vLLM 0.34 auto_awq.py get_quant_method -> quant_utils.py is_layer_skipped(...,
    match_mode="substring"), after maybe_update_config (an empty list is inferred from the
    safetensors dtypes: every module minus the quantized ones)."""
    ignored = qcfg.get("modules_to_not_convert")
    if not ignored:
        modules = {n.rsplit(".", 1)[0] for n in ckpt.meta}
        ignored = sorted(modules - ckpt.quantized_modules())
    proj = layer.rpartition(".")[2]
    if proj in PACKED_MODULES_MAPPING and any(x in layer for x in ignored):
        return True
    states = {any(x in s for x in ignored) for s in shards}
    assert len(states) == 1, f"vLLM: 'Detected some but not all shards of {layer} are quantized'"
    return states.pop()


def check_awq(model: Any, ckpt: Checkpoint) -> None:
    q = ckpt.qcfg
    want = expected_quantized(model)
    linears = model.linear_names()
    stored = {n for n in linears if n + ".qweight" in ckpt.meta}
    assert stored == set(want)
    for key in ISSUE_AWQ_KEYS + VLLM_AWQ_MARLIN_REQUIRED:
        assert key in q, f"awq quantization_config lacks {key!r}"
    for keys in VLLM_AWQ_REQUIRED:
        get_from_keys(q, keys)
    assert q["quant_method"] == "awq"
    # both spellings, equal: vLLM's AWQConfig reads w_bit / q_group_size first, transformers
    # and awq_marlin only bits / group_size (transformers' defaults 4 / 128 otherwise)
    assert is_int(q["bits"]) and q["bits"] == q["w_bit"] == 4  # vLLM: "only 4-bit"
    assert is_int(q["group_size"]) and q["group_size"] == q["q_group_size"]
    specs = set(want.values())
    assert {s.bits for s in specs} == {4}
    assert {s.group_size for s in specs} == {q["group_size"]}, "one group size for all"
    assert q["group_size"] > 0
    assert is_bool(q["zero_point"]) and q["zero_point"] is True  # GEMM always stores qzeros
    assert q.get("version", "gemm") == "gemm"  # transformers: format = kwargs.pop("version")
    assert str(q.get("version", "gemm")).lower() in AWQ_FORMATS
    for name in want:
        n_in = ckpt.meta[name + ".qweight"]["shape"][0]
        assert n_in % q["group_size"] == 0, name  # awq.py create_weights' alignment
    m = q.get("modules_to_not_convert")
    assert m is None or (isinstance(m, list) and all(isinstance(s, str) for s in m))
    # transformers: get_modules_to_not_convert(..., add_default_skips=True) adds the output
    # embedding (lm_head) to the list; every other float linear must be on it
    patterns = [*(m or []), "lm_head"]
    converted = {n for n in linears if should_convert_module(n, patterns)}
    assert converted == set(want), (
        f"transformers would convert {sorted(converted ^ set(want))} wrongly; "
        f"modules_to_not_convert={m}"
    )
    blocks = [n for n in linears if n.startswith("model.layers.")]
    for layer, shards in vllm_layers(blocks).items():
        skipped = vllm_awq_skipped(q, ckpt, layer, shards)
        assert skipped == (shards[0] not in want), f"vLLM skip={skipped} for {layer}"
    if "lm_head" in q:
        assert q["lm_head"] is ("lm_head" in want)


AWQ_CASES = {
    "awq4-asym-g32": qfast.Recipe("awq", bits=4, group_size=32, symmetric=False),
    "rtn4-asym-g32": qfast.Recipe("rtn", bits=4, group_size=32, symmetric=False),
    "rtn4-sym-g32": qfast.Recipe("rtn", bits=4, group_size=32),
    "rtn4-float-down0": qfast.Recipe("rtn", bits=4, group_size=32, overrides={DOWN0: None}),
    "rtn4-float-qkv0": qfast.Recipe(
        "rtn", bits=4, group_size=32, overrides=FLOAT_OVERRIDES["qkv0"]
    ),
}


@pytest.mark.parametrize("case", list(AWQ_CASES))
def test_awq_config_has_every_key_the_loaders_read(case: str, folder: Path, tmp_path: Path):
    model = quantized(folder, AWQ_CASES[case])
    ckpt = save(model, tmp_path / "awq", "awq")
    check_awq(model, ckpt)
    if case.endswith("down0"):
        assert any(DOWN0 in s for s in ckpt.qcfg["modules_to_not_convert"])


# -- compressed-tensors ----------------------------------------------------------------------


def validate_args(args: dict[str, Any]) -> dict[str, Any]:
    """compressed-tensors quant_args.py QuantizationArgs: extra="forbid", the field
    validators and validate_model_after, for the integer weight case."""
    extra = set(args) - set(CT_ARGS_FIELDS)
    assert not extra, f"QuantizationArgs forbids extra keys: {sorted(extra)}"
    a = {
        "num_bits": args.get("num_bits", 8),
        "type": str(args.get("type", "int")).lower(),
        "symmetric": args.get("symmetric", True),
        "group_size": args.get("group_size"),
        "strategy": args.get("strategy"),
        "dynamic": args.get("dynamic", False),
        "actorder": args.get("actorder"),
    }
    assert is_int(a["num_bits"]) and a["type"] == "int" and is_bool(a["symmetric"])
    gs, strategy = a["group_size"], a["strategy"]
    assert gs is None or (is_int(gs) and gs >= -1)
    if strategy is None:
        strategy = "tensor" if gs is None else ("group" if gs > 0 else "channel")
    if strategy == "group":
        assert gs is not None and gs > 0, "strategy group requires group_size > 0"
    if gs is not None and gs > 0:
        assert strategy == "group", "group_size requires strategy to be set to 'group'"
    assert a["actorder"] in CT_ACTORDER, a["actorder"]
    a["strategy"] = strategy
    return a


def vllm_ct_scheme(qcfg: dict[str, Any], layer: str, shards: list[str]) -> str | None:
    """vLLM CompressedTensorsConfig.get_scheme_dict: should_ignore_layer, then
    find_matched_target (layer name, fused shards, then class name as a case-insensitive
    "contains"); returns the matched target."""

    def eq_or_re(value: str, target: str, contains: bool = False) -> bool:
        if target.startswith("re:"):
            return re.match(target[3:], value) is not None
        if contains:
            return target.lower() in value.lower()
        return target == value

    ignore = qcfg.get("ignore", [])
    direct = [p for p in ignore if eq_or_re(layer, p)]
    if direct:
        return None
    if layer.rpartition(".")[2] in PACKED_MODULES_MAPPING:
        ignored = [any(eq_or_re(s, p) for p in ignore) for s in shards]
        assert all(ignored) or not any(ignored), f"vLLM: different schemes for {layer}'s shards"
        if all(ignored):
            return None
    targets = [t for g in qcfg["config_groups"].values() for t in g["targets"]]
    for t in targets:
        if eq_or_re(layer, t):
            return t
    if layer.rpartition(".")[2] in PACKED_MODULES_MAPPING:
        per = [next((t for t in targets if eq_or_re(s, t)), None) for s in shards]
        if all(per):
            return per[0]
    cls = VLLM_CLASS[layer.rpartition(".")[2]]
    for t in targets:
        if eq_or_re(cls, t, contains=True):
            return t
    return None


def ct_targeted(qcfg: dict[str, Any], name: str) -> dict[str, Any] | None:
    """compressed-tensors utils/match.py is_match for a Hugging Face nn.Linear named ``name``
    (match_name: exact or "re:"; _match_class: "Linear" is nn.Linear's class name), minus
    ``ignore``; returns the scheme of the first matching group."""

    def match(target: str) -> bool:
        if target.startswith("re:"):
            return re.match(target[3:], name) is not None
        return target == name or target == "Linear"

    if any(match(p) for p in qcfg.get("ignore", [])):
        return None
    for group in qcfg["config_groups"].values():
        if any(match(t) for t in group["targets"]):
            return group
    return None


def check_ct(model: Any, ckpt: Checkpoint) -> None:
    q = ckpt.qcfg
    want = expected_quantized(model)
    linears = model.linear_names()
    stored = {n for n in linears if n + ".weight_packed" in ckpt.meta}
    assert stored == set(want)
    for key in CT_REQUIRED + ISSUE_CT_KEYS:
        assert key in q, f"compressed-tensors quantization_config lacks {key!r}"
    assert q["quant_method"] == "compressed-tensors"
    assert q["format"] == "pack-quantized"
    assert q["quantization_status"] == "compressed"
    assert isinstance(q["ignore"], list) and all(isinstance(s, str) for s in q["ignore"])
    assert isinstance(q["config_groups"], dict) and q["config_groups"]
    # vLLM 0.34: a non-empty sparsity_config raises; transform_config builds transforms
    assert not q.get("sparsity_config") and not q.get("transform_config")
    assert q.get("kv_cache_scheme") is None
    for gname, group in q["config_groups"].items():
        extra = set(group) - set(CT_SCHEME_FIELDS)
        assert not extra, f"{gname}: QuantizationScheme forbids extra keys {sorted(extra)}"
        assert isinstance(group["targets"], list) and group["targets"]
        assert all(isinstance(t, str) for t in group["targets"])
        assert group.get("input_activations") is None  # vLLM: WNA16 needs none
        assert group.get("output_activations") is None
        assert group.get("format", q["format"]) in (None, "pack-quantized")
        a = validate_args(group["weights"])
        assert a["strategy"] in ("channel", "group") and not a["dynamic"]
    # every linear: the scheme compressed-tensors / transformers give it is what it holds
    for name in linears:
        group = ct_targeted(q, name)
        spec = want.get(name)
        if spec is None:
            assert group is None, f"compressed-tensors would quantize {name}; it is float"
            continue
        assert group is not None, f"compressed-tensors leaves {name} in float; it is packed"
        a = validate_args(group["weights"])
        assert a["num_bits"] == spec.bits, name
        assert a["symmetric"] == spec.symmetric, name
        assert (name + ".weight_zero_point" in ckpt.meta) == (not spec.symmetric), name
        shape = ckpt.meta[name + ".weight_scale"]["shape"]
        if spec.group_size is None:
            assert a["strategy"] == "channel" and a["group_size"] in (None, -1), name
            assert shape[-1] == 1, name
        else:
            assert a["strategy"] == "group" and a["group_size"] == spec.group_size, name
        has_g_idx = name + ".weight_g_idx" in ckpt.meta
        # vLLM 0.20.2: a weight_g_idx parameter exists exactly when actorder == "group"
        assert (a["actorder"] in ("group", "dynamic")) == has_g_idx, name
        assert has_g_idx == spec.act_order, name
    # vLLM: the same decision on its fused layers
    for layer, shards in vllm_layers(linears).items():
        target = vllm_ct_scheme(q, layer, shards)
        quant = shards[0] in want
        assert (target is not None) == quant, f"vLLM: {layer} target {target!r}"


CT_CASES = {
    "rtn4-sym-g32": qfast.Recipe("rtn", bits=4, group_size=32),
    "rtn8-asym-channel": qfast.Recipe("rtn", bits=8, group_size=None, symmetric=False),
    "gptq4-actorder": qfast.Recipe("gptq", bits=4, group_size=32, act_order=True),
    "rtn4-float-down0": qfast.Recipe("rtn", bits=4, group_size=32, overrides={DOWN0: None}),
    "rtn4-float-qkv0": qfast.Recipe(
        "rtn", bits=4, group_size=32, overrides=FLOAT_OVERRIDES["qkv0"]
    ),
    "rtn-mixed-bits": qfast.Recipe(
        "rtn", bits=4, group_size=32, overrides={"model.layers.1.self_attn.*": {"bits": 8}}
    ),
}


@pytest.mark.parametrize("case", list(CT_CASES))
def test_compressed_tensors_config_has_every_key_the_loaders_read(
    case: str, folder: Path, tmp_path: Path
) -> None:
    model = quantized(folder, CT_CASES[case])
    ckpt = save(model, tmp_path / "ct", "compressed-tensors")
    check_ct(model, ckpt)
    if case.endswith("down0"):
        assert DOWN0 in ckpt.qcfg["ignore"] or any(
            p.startswith("re:") and re.match(p[3:], DOWN0) for p in ckpt.qcfg["ignore"]
        )
    assert "lm_head" in ckpt.qcfg["ignore"]  # "Linear" matches an nn.Linear lm_head

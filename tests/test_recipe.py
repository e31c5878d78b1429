"""qfast.Recipe: per-method defaults, JSON round trips, module resolution and every error.

The expected values are written out here from the issue and the recipe's documentation (the
defaults table, fnmatch / ``re:`` patterns, "a later match wins"), not read from the module.
"""

from __future__ import annotations

import json
import re

import pytest

import qfast
from qfast.model.recipe import LayerSpec

Q = "model.layers.0.self_attn.q_proj"
DOWN0 = "model.layers.0.mlp.down_proj"
UP0 = "model.layers.0.mlp.up_proj"
DOWN10 = "model.layers.10.mlp.down_proj"

# method -> (bits, group_size, symmetric, scale_dtype, calibrated, compute)
DEFAULTS = {
    "rtn": (4, 128, True, "float16", False, "float"),
    "gptq": (4, 128, True, "float16", True, "float"),
    "awq": (4, 128, True, "float16", True, "float"),
    "hqq": (4, 128, False, "float32", False, "float"),
    "w8a8": (8, None, True, "float16", False, "int8"),
}


@pytest.mark.parametrize("method", list(DEFAULTS))
def test_defaults_per_method(method: str) -> None:
    bits, group, sym, sdtype, calibrated, compute = DEFAULTS[method]
    r = qfast.Recipe(method)
    assert (r.method, r.bits, r.group_size, r.symmetric, r.scale_dtype) == (
        method,
        bits,
        group,
        sym,
        sdtype,
    )
    assert r.act_order is False and r.damp == 0.01
    assert r.ignore == ("lm_head",) and r.overrides == {}
    assert r.calibrated is calibrated and r.compute == compute
    assert r.resolve(Q) == LayerSpec(method, bits, group, sym, False, 0.01, sdtype)
    assert r.resolve("lm_head") is None  # the default ignore keeps the LM head in float
    # the method name is case-insensitive and stored lower-case
    assert qfast.Recipe(method.upper()) == r


def test_default_recipe_is_gptq_int4_g128() -> None:
    assert qfast.Recipe() == qfast.Recipe("gptq", bits=4, group_size=128, symmetric=True)


def test_describe() -> None:
    assert qfast.Recipe("gptq", group_size=64, symmetric=False).describe() == (
        "gptq INT4 asymmetric g64"
    )
    assert qfast.Recipe("gptq", act_order=True).describe() == "gptq INT4 symmetric g128 act-order"
    assert qfast.Recipe("w8a8").describe() == ("w8a8 INT8 symmetric per-channel + INT8 activations")
    assert (
        qfast.Recipe("rtn", bits=8, group_size=None).describe() == "rtn INT8 symmetric per-channel"
    )


# -- JSON ----------------------------------------------------------------------------------


def rich_recipe() -> qfast.Recipe:
    return qfast.Recipe(
        "gptq",
        bits=3,
        group_size=64,
        symmetric=False,
        act_order=True,
        static_groups=True,
        damp=0.05,
        scale_dtype="bfloat16",
        ignore=("lm_head", "re:layers\\.0\\."),
        overrides={
            "*.mlp.down_proj": {"bits": 8, "group_size": None},
            "re:layers\\.[0-1]\\.self_attn\\.(q|k)_proj$": None,
            "lm_head": {"bits": 6, "act_order": False},
        },
    )


def test_json_round_trip_with_overrides_and_none() -> None:
    r = rich_recipe()
    text = r.to_json()
    data = json.loads(text)  # plain JSON, written as documented
    assert data == {
        "qfast_recipe": 1,
        "method": "gptq",
        "bits": 3,
        "group_size": 64,
        "symmetric": False,
        "act_order": True,
        "static_groups": True,
        "damp": 0.05,
        "mse": False,
        "scale_dtype": "bfloat16",
        "ignore": ["lm_head", "re:layers\\.0\\."],
        "overrides": {
            "*.mlp.down_proj": {"bits": 8, "group_size": None},
            "re:layers\\.[0-1]\\.self_attn\\.(q|k)_proj$": None,
            "lm_head": {"bits": 6, "act_order": False},
        },
    }
    back = qfast.Recipe.from_json(text)
    assert back == r
    assert list(back.overrides) == list(r.overrides)  # order matters: a later match wins
    assert qfast.Recipe.from_dict(r.to_dict()) == r
    for m in (Q, DOWN0, DOWN10, "model.layers.1.self_attn.k_proj", "lm_head"):
        assert back.resolve(m) == r.resolve(m), m
    # a dict without the version key, and with ignore as a list, reads too
    d = r.to_dict()
    del d["qfast_recipe"]
    assert qfast.Recipe.from_dict(d) == r


@pytest.mark.parametrize("method", list(DEFAULTS))
def test_json_round_trip_of_each_methods_defaults(method: str) -> None:
    r = qfast.Recipe(method)
    assert qfast.Recipe.from_json(r.to_json()) == r
    # the resolved defaults are written, so a later change of defaults cannot change a recipe
    assert json.loads(r.to_json())["bits"] == DEFAULTS[method][0]


# -- resolve -------------------------------------------------------------------------------


def spec(r: qfast.Recipe, module: str) -> tuple | None:
    s = r.resolve(module)
    return None if s is None else (s.bits, s.group_size, s.symmetric)


def test_resolve_glob_matches_whole_names() -> None:
    r = qfast.Recipe("rtn", overrides={"*.mlp.down_proj": {"bits": 8}})
    assert spec(r, DOWN0) == (8, 128, True)
    assert spec(r, DOWN10) == (8, 128, True)
    assert spec(r, UP0) == (4, 128, True)
    # a glob is anchored at both ends (fnmatch), not searched
    assert spec(qfast.Recipe("rtn", overrides={"mlp.down_proj": {"bits": 8}}), DOWN0)[0] == 4
    assert spec(qfast.Recipe("rtn", overrides={"*.mlp.down": {"bits": 8}}), DOWN0)[0] == 4
    # [..] character classes and ? work as fnmatch's
    r = qfast.Recipe("rtn", overrides={"model.layers.?.mlp.*_proj": None})
    assert r.resolve(DOWN0) is None and r.resolve(UP0) is None and r.resolve(DOWN10) is not None


def test_resolve_regex_is_searched() -> None:
    r = qfast.Recipe("rtn", overrides={"re:layers\\.[0-1]\\.": {"bits": 2}})
    assert spec(r, DOWN0)[0] == 2
    assert spec(r, "model.layers.1.self_attn.v_proj")[0] == 2
    assert spec(r, DOWN10)[0] == 4  # "layers.1" is followed by "0", not "."
    assert spec(r, "model.layers.2.mlp.up_proj")[0] == 4
    # anchors work as in re.search
    r = qfast.Recipe("rtn", overrides={"re:^model\\.layers\\.0\\.": None, "re:up_proj$": None})
    assert r.resolve(DOWN0) is None and r.resolve("model.layers.3.mlp.up_proj") is None
    assert r.resolve("model.layers.3.mlp.down_proj") is not None


def test_later_match_wins_and_fields_accumulate() -> None:
    a = qfast.Recipe("gptq", overrides={"*.mlp.*": {"bits": 8}, "*.down_proj": {"bits": 3}})
    assert spec(a, DOWN0) == (3, 128, True) and spec(a, UP0) == (8, 128, True)
    b = qfast.Recipe("gptq", overrides={"*.down_proj": {"bits": 3}, "*.mlp.*": {"bits": 8}})
    assert spec(b, DOWN0) == (8, 128, True)
    # each match changes only its fields: bits from the first, group_size from the second
    c = qfast.Recipe("gptq", overrides={"*.mlp.*": {"bits": 8}, "*.down_proj": {"group_size": 32}})
    assert spec(c, DOWN0) == (8, 32, True) and spec(c, UP0) == (8, 128, True)
    # None after fields skips the module; fields after None bring it back with the base's
    d = qfast.Recipe("gptq", overrides={"*.mlp.*": {"bits": 8}, "*.down_proj": None})
    assert d.resolve(DOWN0) is None and spec(d, UP0) == (8, 128, True)
    e = qfast.Recipe("gptq", overrides={"*.mlp.*": None, "*.down_proj": {"symmetric": False}})
    assert spec(e, DOWN0) == (4, 128, False) and e.resolve(UP0) is None
    assert e.resolve(DOWN0) == LayerSpec("gptq", 4, 128, False, False, 0.01, "float16")


def test_ignore_and_an_override_that_brings_a_module_back() -> None:
    r = qfast.Recipe("gptq")
    assert r.resolve("lm_head") is None and r.resolve(Q) is not None
    back = qfast.Recipe("gptq", overrides={"lm_head": {"bits": 8}})
    assert spec(back, "lm_head") == (8, 128, True)
    assert qfast.Recipe("gptq", ignore=()).resolve("lm_head") is not None
    # a bare string is one pattern, not its characters
    s = qfast.Recipe("gptq", ignore="*.self_attn.*")
    assert s.ignore == ("*.self_attn.*",) and s.resolve(Q) is None
    assert s.resolve("lm_head") is not None  # the default ignore is replaced
    # an override with an empty dict re-enables with the recipe's own settings
    assert spec(qfast.Recipe("rtn", overrides={"lm_head": {}}), "lm_head") == (4, 128, True)


def test_replace_checks_again() -> None:
    r = qfast.Recipe("gptq", group_size=64)
    assert r.replace(bits=8).bits == 8 and r.replace(bits=8).group_size == 64
    with pytest.raises(ValueError, match="act_order is GPTQ's"):
        r.replace(act_order=True, method="rtn")


# -- errors --------------------------------------------------------------------------------


BAD = [
    (dict(method="gpt"), ValueError, "unknown method 'gpt'.*'rtn', 'gptq', 'awq', 'hqq', 'w8a8'"),
    (dict(method=3), ValueError, "unknown method 3"),
    (
        dict(method="hqq", symmetric=True),
        ValueError,
        "hqq's grid is asymmetric; pass symmetric=False",
    ),
    (dict(method="w8a8", group_size=64), ValueError, "w8a8 quantizes weights per channel"),
    (dict(method="rtn", act_order=True), ValueError, "act_order is GPTQ's; rtn does not take it"),
    (dict(method="awq", act_order=True), ValueError, "act_order is GPTQ's; awq does not"),
    (dict(method="rtn", static_groups=True), ValueError, "static_groups is GPTQ's; rtn does not"),
    (dict(static_groups="yes"), TypeError, "static_groups must be True or False"),
    (
        dict(method="hqq", symmetric=False, scale_dtype="float16"),
        ValueError,
        "scale_dtype 'float16': hqq takes float32",
    ),
    (dict(method="hqq", scale_dtype="bfloat16"), ValueError, "hqq takes float32"),
    (dict(scale_dtype="float64"), ValueError, "'float64': gptq takes float32, float16, bfloat16"),
    (dict(bits=9), ValueError, "bits=9 is not supported; pass bits between 2 and 8"),
    (dict(bits=1), ValueError, "pass bits between 2 and 8"),
    (dict(bits=0), ValueError, "pass bits between 2 and 8"),
    (dict(bits="4"), TypeError, "bits"),
    (dict(group_size=0), ValueError, "group_size must be a positive int or None"),
    (dict(group_size=-64), ValueError, "group_size must be a positive int or None"),
    (dict(group_size=True), ValueError, "group_size must be a positive int or None"),
    (dict(group_size=64.0), ValueError, "group_size must be a positive int or None"),
    (dict(damp=0), ValueError, "damp must be a positive number, got 0"),
    (dict(damp="0.1"), ValueError, "damp must be a positive number"),
    (dict(symmetric="yes"), TypeError, "symmetric must be True or False"),
    (dict(act_order=1), TypeError, "act_order must be True or False"),
    (dict(ignore=("re:(",)), ValueError, "pattern 're:\\(' is not a valid regex"),
    (dict(ignore=(3,)), TypeError, "a module pattern must be a non-empty str"),
    (dict(overrides={"re:[a-": None}), ValueError, "is not a valid regex"),
    (dict(overrides={"": None}), TypeError, "a module pattern must be a non-empty str"),
    (
        dict(overrides={"*.down_proj": 8}),
        TypeError,
        r"override '\*.down_proj' must be a dict of fields or None, not int",
    ),
    (
        dict(overrides={"*.down_proj": "rtn"}),
        TypeError,
        "must be a dict of fields or None, not str",
    ),
    (dict(overrides=[("*", None)]), TypeError, "overrides must map a module pattern to fields"),
    (
        dict(overrides={"*": {"method": "rtn"}}),
        ValueError,
        r"override '\*' sets method; an override may change bits, group_size",
    ),
    (dict(overrides={"*": {"bitz": 3}}), ValueError, "sets bitz"),
    (dict(overrides={"*": {"bits": 9}}), ValueError, "bits=9"),
    (dict(method="hqq", overrides={"*": {"symmetric": True}}), ValueError, "pass symmetric=False"),
    (dict(method="w8a8", overrides={"*": {"group_size": 32}}), ValueError, "per channel"),
    (dict(method="rtn", overrides={"*": {"act_order": True}}), ValueError, "act_order is GPTQ's"),
    (dict(method="awq", mse=True), ValueError, "mse is the GPTQ grid's search"),
    (dict(method="hqq", symmetric=False, overrides={"*": {"mse": True}}), ValueError, "mse is"),
    (dict(mse="yes"), TypeError, "mse must be True or False"),
    (
        dict(method="hqq", symmetric=False, overrides={"*": {"scale_dtype": "float16"}}),
        ValueError,
        "an override's scale_dtype",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_recipes_say_what_to_do(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        qfast.Recipe(**kwargs)
    # the same fields as JSON fail the same way (except what JSON cannot hold)
    if "overrides" in kwargs and not isinstance(kwargs["overrides"], dict):
        return
    try:
        text = json.dumps(kwargs)
    except TypeError:
        return
    with pytest.raises(error, match=message):
        qfast.Recipe.from_json(text)


def test_bad_json() -> None:
    with pytest.raises(ValueError, match="a recipe must be JSON"):
        qfast.Recipe.from_json("{method: gptq")
    with pytest.raises(TypeError, match=r"Recipe\.from_dict takes a dict, not list"):
        qfast.Recipe.from_json('["gptq"]')
    with pytest.raises(ValueError, match=re.escape("unknown field(s) bitz, mode; a recipe has")):
        qfast.Recipe.from_json('{"method": "gptq", "bitz": 4, "mode": 1}')
    with pytest.raises(ValueError, match=r"recipe format version 2.*upgrade qfast"):
        qfast.Recipe.from_json('{"qfast_recipe": 2, "method": "gptq"}')
    # a recipe's file is what the CLI's --recipe reads: the errors name the field
    with pytest.raises(ValueError, match="unknown method 'fp8'"):
        qfast.Recipe.from_json('{"method": "fp8"}')

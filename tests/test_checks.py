"""Every argument rule has one home (``qfast._checks`` in Python, ``src/checks.rs`` in Rust), so
the same bad argument gets the same exception and the same message from every function that
takes it, and no function reads a bad argument as something else (``Hessian(3.7)`` as 3,
``symmetric='no'`` as True)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np
import pytest

import qfast
import qfast.gguf as qg
from qfast import _qfast

F32 = np.float32
RNG = np.random.default_rng(11)
W = RNG.standard_normal((8, 64)).astype(F32)
X = RNG.standard_normal((96, 64)).astype(F32)

ROOT = Path(__file__).resolve().parents[1]

BITS_MESSAGE = "bits={} is not supported; pass bits between 2 and 8"
FLOAT_MESSAGE = (
    "{} must be a float array (float32, float64, float16 or bfloat16), got {}; convert it "
    "first, e.g. with .astype(np.float32)"
)


def error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[type, str]:
    """The exception type and message ``fn(*args, **kwargs)`` raises."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return type(e), str(e)
    raise AssertionError(f"{fn} did not raise")


# --- one argument, every function that takes it ------------------------------------------------

# name -> (call with keyword arguments, which of bits / group_size / symmetric it takes)
FUNCTIONS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "quantize": (lambda **kw: qfast.quantize(W, **kw), ("bits", "group_size", "symmetric")),
    "rtn": (lambda **kw: qfast.rtn(W, **kw), ("bits", "group_size", "symmetric")),
    "gptq": (lambda **kw: qfast.gptq(W, X, **kw), ("bits", "group_size", "symmetric")),
    "awq": (lambda **kw: qfast.awq(W, X, **kw), ("bits", "group_size", "symmetric")),
    "hqq": (lambda **kw: qfast.hqq(W, **kw), ("bits", "group_size")),
}

# (argument, bad value, exception, message)
BAD_ARGUMENTS = [
    *[("bits", b, ValueError, BITS_MESSAGE.format(b)) for b in (0, 1, 9, 16, -4)],
    *[
        ("bits", b, TypeError, f"bits must be an integer, got {b!r}")
        for b in (3.7, 4.0, "4", True, None, np.float32(4))
    ],
    *[("group_size", g, ValueError, f"group_size must be at least 1, got {g}") for g in (0, -2)],
    *[
        ("group_size", g, TypeError, f"group_size must be an integer, got {g!r}")
        for g in (2.5, 32.0, "32", True, np.bool_(True))
    ],
    *[
        ("symmetric", s, TypeError, f"symmetric must be True or False, got {s!r}")
        for s in ("no", "yes", 0, 1, None, 1.0)
    ],
]


@pytest.mark.parametrize(("arg", "bad", "exc", "message"), BAD_ARGUMENTS)
def test_same_bad_argument_same_error_everywhere(arg: str, bad: Any, exc: type, message: str):
    got = {name: error(fn, **{arg: bad}) for name, (fn, takes) in FUNCTIONS.items() if arg in takes}
    assert len(got) >= 4
    for name, (kind, text) in got.items():
        assert (kind, text) == (exc, message), name


FLOAT_INPUTS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "quantize": ("x", lambda a: qfast.quantize(a, 4)),
    "rtn": ("W", lambda a: qfast.rtn(a)),
    "gptq": ("W", lambda a: qfast.gptq(a, X)),
    "gptq X": ("calibration inputs", lambda a: qfast.gptq(W, a)),
    "awq": ("W", lambda a: qfast.awq(a, X)),
    "awq X": ("X", lambda a: qfast.awq(W, a)),
    "hqq": ("W", lambda a: qfast.hqq(a)),
    "Hessian.add": ("calibration inputs", lambda a: qfast.Hessian(64).add(a)),
    "gguf.quantize": ("x", lambda a: qg.quantize(a, "Q8_0")),
    "linear": ("linear: x", lambda a: qfast.linear(a, qfast.quantize(W, 8, axis=0))),
}


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.longdouble, object]
)
def test_same_float_input_rule_everywhere(dtype: Any):
    for name, (arg, fn) in FLOAT_INPUTS.items():
        bad = W.astype(dtype)
        want = FLOAT_MESSAGE.format(arg, np.dtype(dtype))
        assert error(fn, bad) == (TypeError, want), name


def test_qtensor_input_is_refused_everywhere():
    q = qfast.quantize(W, 8)
    for name, (arg, fn) in FLOAT_INPUTS.items():
        want = f"{arg} is already a QTensor; dequantize it first"
        assert error(fn, q) == (TypeError, want), name


def _as(dtype: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: a.astype(dtype)


def _big_endian(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder(">"))


def _unaligned(a: np.ndarray) -> np.ndarray:
    buf = np.zeros(a.nbytes + 1, np.uint8)[1:]
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _strided(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)[:, ::2]
    out[...] = a
    return out


RESULTS: dict[str, Callable[[Any, Any], np.ndarray]] = {
    "quantize": lambda w, x: qfast.quantize(w, 4, group_size=16).dequantize(),
    "rtn": lambda w, x: qfast.rtn(w, 4, 16).dequantize(),
    "gptq": lambda w, x: qfast.gptq(w, x, group_size=16).dequantize(),
    "awq": lambda w, x: qfast.awq(w, x, group_size=16).qweights[0].dequantize(),
    "hqq": lambda w, x: qfast.hqq(w, 4, 16).dequantize(),
    "Hessian": lambda w, x: qfast.Hessian(64).add(x).matrix(),
    "gguf.quantize": lambda w, x: qg.quantize(w, "Q8_0"),
    "linear": lambda w, x: qfast.linear(x, qfast.quantize(W, 8, axis=0)),
}


@pytest.mark.parametrize(
    "convert",
    [_as(np.float16), _as(ml_dtypes.bfloat16), _as(np.float64), _big_endian, _unaligned, _strided],
    ids=["float16", "bfloat16", "float64", "big-endian", "unaligned", "strided"],
)
def test_every_float_input_is_read_the_same_way(convert: Callable[[np.ndarray], np.ndarray]):
    # Values exact in every dtype tried (bfloat16 keeps 8 significant bits), so each function
    # must give exactly what it gives for the same values in float32.
    w32 = W.astype(ml_dtypes.bfloat16).astype(F32)
    x32 = X.astype(ml_dtypes.bfloat16).astype(F32)
    w, x = convert(w32), convert(x32)
    for name, fn in RESULTS.items():
        np.testing.assert_array_equal(fn(w, x), fn(w32, x32), err_msg=name)


def test_gguf_quantize_takes_bfloat16_like_quantize():
    xb = X.astype(ml_dtypes.bfloat16)
    gguf = pytest.importorskip("gguf")
    for t in ("Q8_0", "Q4_1", "BF16", "F32"):
        want = gguf.quants.quantize(xb.astype(F32), gguf.GGMLQuantizationType[t])
        got = qg.quantize(xb, t)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), t
    # as qfast.quantize does
    np.testing.assert_array_equal(
        qfast.quantize(xb, 8).dequantize(), qfast.quantize(xb.astype(F32), 8).dequantize()
    )


# --- integers, bools and numbers are what they say ------------------------------------------


@pytest.mark.parametrize("bad", [3.7, 64.0, "128", b"64", True, np.float64(64), None, [64]])
def test_hessian_size_must_be_an_integer(bad: Any):
    assert error(qfast.Hessian, bad) == (
        TypeError,
        f"in_features must be an integer, got {bad!r}",
    )


def test_hessian_size_range_and_numpy_integers():
    assert qfast.Hessian(np.int64(3)).in_features == 3
    assert error(qfast.Hessian, 0) == (ValueError, "in_features must be at least 1, got 0")


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda v: qfast.gptq(W, X, act_order=v), "act_order"),
        (lambda v: qfast.gptq(W, X, static_groups=v), "static_groups"),
        (lambda v: qfast.gptq(W, X, mse=v), "mse"),
        (lambda v: qfast.rtn(W, mse=v), "mse"),
        (lambda v: qfast.awq(W, X, group_size=32, clip=v), "clip"),
        (lambda v: qfast.awq(W, X, group_size=32, duo_scaling=v), "duo_scaling"),
        (lambda v: qfast.hqq(W, early_stop=v), "early_stop"),
        (lambda v: qfast.hqq(W, optimize=v), "optimize"),
        (lambda v: qfast.hqq(W, round_zero=v), "round_zero"),
        (lambda v: qfast.unpack_int4(np.zeros(2, np.uint8), 4, signed=v), "signed"),
        (lambda v: qfast.pack_int4(np.zeros(4, np.int8), signed=v), "signed"),
    ],
)
def test_every_flag_is_a_bool(call: Callable[[Any], Any], arg: str):
    for bad in ("no", "False", 0, 1.0):
        assert error(call, bad) == (TypeError, f"{arg} must be True or False, got {bad!r}")
    call(np.bool_(False))


def test_symmetric_false_is_not_symmetric_true():
    # 'no' used to count as True: the asymmetric grid must differ from the symmetric one
    asym, sym = qfast.quantize(W, 4, symmetric=False), qfast.quantize(W, 4, symmetric=True)
    assert asym.zero_point is not None and sym.zero_point is None
    assert qfast.quantize(W, 4, symmetric=np.bool_(False)).zero_point is not None


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda v: qfast.gptq(W, X, damp=v), "damp"),
        (lambda v: qfast.hqq(W, beta=v), "beta"),
        (lambda v: qfast.hqq(W, kappa=v), "kappa"),
    ],
)
def test_positive_numbers(call: Callable[[Any], Any], arg: str):
    for bad in ("0.01", True, None):
        assert error(call, bad) == (TypeError, f"{arg} must be a number, got {bad!r}")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        want = f"{arg} must be a positive finite number, got {bad!r}"
        assert error(call, bad) == (ValueError, want)
    call(np.float32(0.5))


def test_lists_of_numbers_are_float_input_everywhere():
    rows = [[int(v) for v in r] for r in np.rint(W * 4)]  # a nested list of Python ints
    want = np.asarray(rows, F32)
    for name, fn in RESULTS.items():
        # (awq takes a list as a group of weights; Hessian and linear read only x)
        if name not in ("awq", "Hessian", "linear"):
            np.testing.assert_array_equal(fn(rows, X), fn(want, X), err_msg=name)


@pytest.mark.parametrize("g", [48, 3])
def test_group_must_divide_the_same_way(g: int):
    want = (
        f"group_size={g} does not divide the input size 64 (the last axis); pass one of "
        "[1, 2, 4, 8, 16, 32, 64], or None for one group per row"
    )
    assert error(qfast.awq, W, X, group_size=g) == (ValueError, want)
    assert error(qfast.hqq, W, group_size=g) == (ValueError, want)
    # Rust's AWQ and HQQ entry points word it the same way
    assert error(_qfast.awq_quantize, W, g, 4, False) == (ValueError, want)


def test_rust_entry_points_take_the_same_bits():
    # GPTQ's and HQQ's Rust entry points used to take 1-bit grids
    flat = W.reshape(-1)
    for b in (0, 1, 9):
        want = (ValueError, BITS_MESSAGE.format(b))
        assert error(_qfast.gptq_find_params, W, b, True) == want
        assert error(_qfast.hqq_init, flat, [8, 64], 64, b, False) == want
        assert error(_qfast.awq_quantize, W, 64, b, False) == want
        assert error(_qfast.quantize, W, "float32", b, True) == want
    assert error(_qfast.hqq_init, flat, [8, 64], 0, 4, False) == (
        ValueError,
        "group_size must be at least 1, got 0",
    )


def test_rust_words_axis_and_scale_as_python():
    for axis in (2, 5):
        want = (ValueError, f"axis={axis} is out of range for an array with 2 dimensions")
        assert error(qfast.quantize, W, 8, axis=axis) == want
        assert error(_qfast.quantize, W, "float32", 8, True, axis) == want
    assert error(qfast.quantize, W, 8, scale=-2.0) == (
        ValueError,
        "scale must be a positive finite number, got -2.0",
    )
    bad = np.full(1, -2.0, F32)
    assert error(_qfast.quantize, W, "float32", 8, True, None, None, bad) == (
        ValueError,
        "scale must be a positive finite number, got -2",  # Rust prints floats this way
    )


def test_gguf_integers_are_integers(tmp_path: Path):
    data = qg.quantize(np.ones((2, 32), F32), "Q8_0")
    assert error(qg.quantize, W, True)[0] is TypeError  # True used to mean F16 (ggml id 1)
    assert error(qg.dequantize, data, "Q8_0", (2.0, 32)) == (
        TypeError,
        "shape must be an integer, got 2.0",
    )
    assert error(qg.to_qtensor, data, "Q8_0", (2, "32")) == (
        TypeError,
        "shape must be an integer, got '32'",
    )
    pytest.importorskip("gguf")
    assert error(qg.save, tmp_path / "m.gguf", {"t": (data, "Q8_0", (2, 32.0))}, check=False) == (
        TypeError,
        "tensor 't': shape must be an integer, got 32.0",
    )
    assert list(tmp_path.iterdir()) == []


# --- gguf.save writes every integer as a type it fits ------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("llama.block_count", -1),
        ("llama.block_count", 1 << 32),
        ("general.file_type", -2),
        ("tokenizer.ggml.bos_token_id", -1),
    ],
)
def test_gguf_save_refuses_unsigned_keys_out_of_range(tmp_path: Path, key: str, value: int):
    pytest.importorskip("gguf")
    path = tmp_path / "m.gguf"
    meta = {"general.architecture": "llama", key: value}
    with pytest.raises(ValueError, match=rf"metadata {re.escape(key)}: {value} is not a valid"):
        qg.save(path, {}, meta, check=False)
    assert list(tmp_path.iterdir()) == []


def test_gguf_save_still_writes_uint32_and_signed_keys(tmp_path: Path):
    gguf = pytest.importorskip("gguf")
    V = gguf.GGUFValueType
    meta = {"general.architecture": "llama", "llama.block_count": 3, "custom.offset": -1}
    qg.save(tmp_path / "m.gguf", {}, meta, check=False)
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["llama.block_count"].types == [V.UINT32]
    assert fields["llama.block_count"].contents() == 3
    assert fields["custom.offset"].types == [V.INT32]
    assert fields["custom.offset"].contents() == -1
    with pytest.raises(TypeError, match="check must be True or False"):
        qg.save(tmp_path / "m.gguf", {}, meta, check="no")
    with pytest.raises(TypeError, match="alignment must be an integer"):
        qg.save(tmp_path / "m.gguf", {}, meta, alignment=64.0)


# --- the structure: each rule is written in one place --------------------------------------------

PY = ROOT / "python" / "qfast"
RS = ROOT / "src"


def _sources(root: Path, suffix: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob(f"*{suffix}"))
        if p.name not in skip
    }


PY_SOURCES = _sources(PY, ".py")
RS_SOURCES = _sources(RS, ".rs")

# (what, regex): each occurs in exactly one Python file (_checks.py) ...
PY_RULES = [
    ("bits message", r"pass bits between 2 and 8"),
    ("integer message", r"must be an integer, got"),
    ("bool message", r"must be True or False"),
    ("number message", r"must be a number, got"),
    ("at-least message", r"must be at least"),
    ("positive message", r"must be a positive finite number"),
    ("divides message", r"does not divide the input size"),
    ("axis message", r"is out of range for an array"),
    ("finite message", r"quantization needs finite values"),
    ("float input message", r"must be a float array"),
    ("QTensor input message", r"is already a QTensor"),
    ("the float dtypes", r"\"float64\",\s*\"float16\""),
    ("integer conversion", r"operator\.index"),
]
# ... and these nowhere else in Python: bits ranges, flags read with bool(), dtype-kind tests.
PY_NOWHERE = [
    ("a bits range", r"\b2\s*<=\s*[\w.]+\s*<=\s*8\b"),
    ("a flag read with bool()", r"\bbool\((symmetric|signed|mse|clip|check|act_order)"),
    ("a float dtype test", r"dtype\.kind\s*!=\s*\"f\"|dtype\.name\s*!=\s*\"bfloat16\""),
]
# Rust: each rule's wording once, in src/checks.rs (NaN/Inf: src/error.rs).
RS_RULES = [
    ("bits message", r"pass bits between 2 and 8", "checks.rs"),
    ("bits range", r"\(\s*\d\s*\.\.=\s*8\s*\)\s*\.contains", "checks.rs"),
    ("divides message", r"does not divide the input size", "checks.rs"),
    ("axis message", r"is out of range for an array", "checks.rs"),
    ("positive message", r"positive finite number|positive and finite", "checks.rs"),
    ("finite message", r"quantization needs finite values", "error.rs"),
]


def _where(sources: dict[str, str], pattern: str) -> list[str]:
    """The files where ``pattern`` occurs outside comments and Rust unit tests, once per hit."""
    hits = []
    for name, text in sources.items():
        code = text.split("#[cfg(test)]")[0]
        lines = (ln for ln in code.splitlines() if not ln.lstrip().startswith(("//", "#")))
        hits += [name] * len(re.findall(pattern, "\n".join(lines)))
    return hits


@pytest.mark.parametrize(("what", "pattern"), PY_RULES, ids=[r[0] for r in PY_RULES])
def test_each_python_rule_is_written_once(what: str, pattern: str):
    assert _where(PY_SOURCES, pattern) == ["_checks.py"], what


@pytest.mark.parametrize(("what", "pattern"), PY_NOWHERE, ids=[r[0] for r in PY_NOWHERE])
def test_no_python_module_writes_its_own_rule(what: str, pattern: str):
    assert _where(PY_SOURCES, pattern) == [], what


@pytest.mark.parametrize(("what", "pattern", "home"), RS_RULES, ids=[r[0] for r in RS_RULES])
def test_each_rust_rule_is_written_once(what: str, pattern: str, home: str):
    assert _where(RS_SOURCES, pattern) == [home], what


def test_python_and_rust_word_the_shared_rules_alike():
    checks_py, checks_rs = (PY / "_checks.py").read_text(), (RS / "checks.rs").read_text()
    for words in (
        "is not supported; pass bits between 2 and 8",
        "must be at least {lo}, got",
        "does not divide the input size {n} (the last axis); pass one of",
        "or None for one group per row",
        "is out of range for an array with {ndim} dimensions",
        "must be a positive finite number, got",
    ):
        assert words in checks_py and words in checks_rs, words


def test_qtensor_uses_the_shared_rules():
    text = (PY / "tensor" / "qtensor.py").read_text()
    assert not re.search(PY_NOWHERE[0][1], text)
    assert "must be at least" not in text and "out of range for" not in text


@pytest.mark.parametrize("shape", [5, "32", b"32", 2.0, {"a": 1}.keys()])
def test_gguf_shapes_are_sequences_of_sizes(shape: Any) -> None:
    """A bare int or a string is not a shape (a string used to be read character by
    character, an int to fail with "'int' object is not iterable")."""
    blocks = qg.quantize(np.ones((2, 32), np.float32), "Q8_0")
    for fn in (qg.dequantize, qg.to_qtensor):
        with pytest.raises(TypeError, match="shape must be"):
            fn(blocks, "Q8_0", shape)

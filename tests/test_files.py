"""Files: the atomic-write helper every writer uses (qfast._files.atomic_write), and
qfast.save / qfast.load (safetensors files holding QTensors and arrays)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qfast
from qfast import _files
from qfast.assets import cache as assets_cache
from qfast.tensor.qtensor import QTensor

st = pytest.importorskip("safetensors.numpy")


@pytest.fixture
def umask() -> Iterator[Any]:
    """Sets the umask for the test and restores it."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with _files.atomic_write(path) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".f.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not replaced before the block ends
    assert path.read_bytes() == b"new"
    assert entries(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, OSError, ValueError])
def test_atomic_write_interrupted(tmp_path: Path, exc: type[BaseException]) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")

    def write(target: Path) -> None:
        with _files.atomic_write(target) as tmp, open(tmp, "wb") as f:
            f.write(b"\0" * 100_000)
            raise exc()

    with pytest.raises(exc):
        write(path)
    assert path.read_bytes() == b"old contents"
    assert entries(tmp_path) == ["f.bin"]
    with pytest.raises(exc):
        write(tmp_path / "new.bin")
    assert entries(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_atomic_write_mode_follows_umask(tmp_path: Path, umask: Any, mask: int) -> None:
    umask(mask)
    path = tmp_path / "f.bin"
    _files.atomic_write_bytes(path, b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert _files._umask() == mask
    ref = tmp_path / "ref"  # what open() gives a new file under the same umask
    ref.write_bytes(b"")
    assert stat.S_IMODE(ref.stat().st_mode) == stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_bad_targets(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="no such directory"),
        _files.atomic_write(tmp_path / "missing" / "f"),
    ):
        pass
    with pytest.raises(IsADirectoryError), _files.atomic_write(tmp_path):
        pass
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError), _files.atomic_write(tmp_path / "file" / "f"):
        pass
    with pytest.raises(OSError, match="qfast-test"), _files.atomic_write("/proc/qfast-test.bin"):
        pass
    assert entries(tmp_path) == ["file"]


# --- every writer goes through it: mode and interruption ------------------------------------


def qtensor() -> QTensor:
    rng = np.random.default_rng(0)
    return qfast.quantize(rng.standard_normal((4, 64)).astype(np.float32), 4, group_size=32)


def write_qfast_save(path: Path) -> None:
    qfast.save(path, {"w": qtensor(), "b": np.ones(3, np.float32)})


def write_gguf(path: Path) -> None:
    pytest.importorskip("gguf")
    qfast.gguf.save(path, {"x": np.ones(32, np.float32)}, {"general.architecture": "test"})


def write_asset_marker(path: Path) -> None:
    assets_cache._atomic_write_bytes(path, b"{}")


def write_cli(path: Path) -> None:
    src = path.with_name("cli-input.safetensors")
    st.save_file({"w": np.ones((4, 64), np.float32)}, str(src))
    assert qfast.cli.main(["quantize", str(src), str(path)]) == 0
    src.unlink()


WRITERS = [write_qfast_save, write_gguf, write_asset_marker, write_cli]


@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__name__)
def test_writers_mode_follows_umask(
    tmp_path: Path, umask: Any, write: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import qfast.cli  # noqa: F401

    for mask in (0o022, 0o002):
        umask(mask)
        path = tmp_path / f"out-{mask:o}"
        write(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, write.__name__
    assert entries(tmp_path) == ["out-2", "out-22"]


@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__name__)
def test_writers_interrupted_leave_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Any
) -> None:
    """Ctrl-C while the file is being written (os.fsync, after all the data went into the
    temporary file): no temporary file left, the old file intact."""
    import qfast.cli

    path = tmp_path / "out"
    path.write_bytes(b"old file")
    real_fsync = os.fsync
    calls = []

    def interrupted(fd: int) -> None:
        calls.append(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    if write is write_cli:  # the CLI turns Ctrl-C into status 130
        src = tmp_path / "in.safetensors"
        st.save_file({"w": np.ones((4, 64), np.float32)}, str(src))
        assert qfast.cli.main(["quantize", str(src), str(path)]) == 130
        src.unlink()
    else:
        with pytest.raises(KeyboardInterrupt):
            write(path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls
    assert path.read_bytes() == b"old file"
    assert entries(tmp_path) == ["out"]


# --- a real SIGINT to `qfast quantize` --------------------------------------------------------

_CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
import qfast.formats.safetensors as qst
slow = {slow}
if slow:  # the data is all written; the signal comes before the rename
    real = qst.write_streamed
    def write_streamed(*a, **k):
        real(*a, **k)
        print("written", flush=True)
        time.sleep(60)
    qst.write_streamed = write_streamed
from qfast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def child_env() -> dict[str, str]:
    pkg_root = str(Path(qfast.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def big_input(path: Path, mb: int) -> None:
    # One weight (quantized) and a large 1-D tensor copied as it is: a big output quickly.
    n = mb * 1_000_000 // 4
    st.save_file(
        {"w": np.ones((8, 64), np.float32), "big": np.arange(n, dtype=np.float32)}, str(path)
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_after_the_data_is_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    big_input(src, 64)
    dst.write_bytes(b"old output")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(slow=True), "quantize", str(src), str(dst)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "written"
        tmp = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(tmp) == 1 and tmp[0].stat().st_size > 64_000_000  # the full-size temp file
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip() == "qfast: interrupted"
    assert dst.read_bytes() == b"old output"
    assert entries(tmp_path) == ["in.safetensors", "out.safetensors"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_mid_write(tmp_path: Path) -> None:
    """SIGINT as soon as the temporary file appears, while safetensors writes it (a 200 MB
    file): the process ends with status 130 and leaves the old file, or, if the write won the
    race, exits 0 with the new file; never a temporary file."""
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    big_input(src, 200)
    dst.write_bytes(b"old output")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(slow=False), "quantize", str(src), str(dst)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.002)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "Traceback" not in err
    assert entries(tmp_path) == ["in.safetensors", "out.safetensors"]
    if proc.returncode == 130:
        assert dst.read_bytes() == b"old output"
    else:
        assert proc.returncode == 0, err
        assert np.array_equal(qfast.load(dst)["big"], st.load_file(str(src))["big"])


# --------------------------------------------------------------------------------------------
# qfast.save / qfast.load


def sample() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 96)).astype(np.float32)
    return {
        "layer.weight": qfast.quantize(w, 4, group_size=32, symmetric=False),
        "layer.bias": rng.standard_normal(6).astype(np.float32),
        "per_tensor": qfast.quantize(w, 8),
        "per_channel": qfast.quantize(w, 8, axis=0),
        "ids": np.arange(10, dtype=np.int64).reshape(2, 5),
        "scalar": np.array(0.5, np.float32),
        "strided": w[:, ::3],
        "big_endian": np.arange(4, dtype=">i4"),
    }


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    tensors = sample()
    qfast.save(path, tensors, {"source": "test"})
    back = qfast.load(path)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        got = back[name]
        if isinstance(value, QTensor):
            assert isinstance(got, QTensor), name
            assert got.shape == value.shape
            assert (got.bits, got.signed, got.axis, got.group_size) == (
                value.bits,
                value.signed,
                value.axis,
                value.group_size,
            )
            np.testing.assert_array_equal(got.data, value.data)
            np.testing.assert_array_equal(got.scale, value.scale)
            np.testing.assert_array_equal(got.dequantize(), value.dequantize())
        else:
            assert isinstance(got, np.ndarray), name
            assert got.shape == value.shape, name
            np.testing.assert_array_equal(got, value)
    # an independent reader: safetensors itself sees the to_dict entries and the metadata
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"source": "test", "format": "qfast"}
        keys = set(f.keys())
    assert "layer.weight.qfast_header" in keys and "layer.weight.data" in keys
    assert "layer.bias" in keys and "layer.weight" not in keys
    ref = tensors["layer.weight"].to_dict(prefix="layer.weight.")
    raw = st.load_file(str(path))
    for k, v in ref.items():
        np.testing.assert_array_equal(raw[k], v)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("granularity", ["tensor", "axis0", "axis-1", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
def test_save_load_every_grid(
    tmp_path: Path, bits: int, granularity: str, symmetric: bool, scale_dtype: str
) -> None:
    """Every width, granularity and scale dtype comes back with the same fields and values
    (a per-tensor grid's 0-d scale and a packed zero point keep their shapes)."""
    kw: dict[str, Any] = {
        "tensor": {},
        "axis0": {"axis": 0},
        "axis-1": {"axis": -1},
        "group": {"group_size": 4},
    }[granularity]
    x = np.random.default_rng(bits).standard_normal((6, 11), dtype=np.float32)
    q = qfast.quantize(x, bits, symmetric=symmetric, scale_dtype=scale_dtype, **kw)
    path = tmp_path / "g.safetensors"
    qfast.save(path, {"w": q})
    got = qfast.load(path)["w"]
    assert isinstance(got, QTensor)
    assert got.scale.dtype == q.scale.dtype and got.scale.shape == q.scale.shape
    np.testing.assert_array_equal(got.data, q.data)
    if q.zero_point is None:
        assert got.zero_point is None
    else:
        np.testing.assert_array_equal(got.zero_point, q.zero_point)
    np.testing.assert_array_equal(got.dequantize(), q.dequantize())


def test_load_plain_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    arrays = {"a": np.ones((2, 3), np.float16), "b": np.arange(4, dtype=np.int32)}
    st.save_file(arrays, str(path))
    back = qfast.load(path)
    assert sorted(back) == ["a", "b"]
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype


def test_load_reads_qfast_quantize_output(tmp_path: Path, capsys: Any) -> None:
    from qfast.cli import main

    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    w = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32)
    st.save_file({"dense.weight": w, "dense.bias": np.ones(8, np.float32)}, str(src))
    assert main(["quantize", str(src), str(dst), "--bits", "4", "--group-size", "64"]) == 0
    back = qfast.load(dst)
    assert isinstance(back["dense.weight"], QTensor)
    ref = qfast.quantize(w, 4, group_size=64)
    np.testing.assert_array_equal(back["dense.weight"].dequantize(), ref.dequantize())
    np.testing.assert_array_equal(back["dense.bias"], np.ones(8, np.float32))


@pytest.mark.parametrize(
    ("names", "clash"),
    [
        (("a", "a.data"), "'a' and 'a.data'"),
        (("a", "a.scale"), "'a' and 'a.scale'"),
        (("a", "a.zero_point"), "'a' and 'a.zero_point'"),  # symmetric: no zero_point entry
        (("a", "a.anything"), "'a' and 'a.anything'"),
    ],
)
def test_save_refuses_name_collisions(tmp_path: Path, names: tuple[str, str], clash: str) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"old")
    for other in (np.ones(3, np.float32), qtensor()):
        with pytest.raises(ValueError, match=f"{clash} collide.*rename one"):
            qfast.save(path, {names[0]: qtensor(), names[1]: other})
        with pytest.raises(ValueError, match="collide"):
            qfast.save(path, {names[1]: other, names[0]: qtensor()})  # either order
    assert path.read_bytes() == b"old"
    assert entries(tmp_path) == ["t.safetensors"]
    # not a collision: an array 'a' with an array 'a.data', or a QTensor 'a' with 'ab'
    qfast.save(path, {"a": np.ones(2, np.float32), "a.data": np.zeros(2, np.float32)})
    assert sorted(qfast.load(path)) == ["a", "a.data"]
    qfast.save(path, {"a": qtensor(), "ab": np.zeros(2, np.float32)})
    assert isinstance(qfast.load(path)["a"], QTensor)


def test_save_refuses_a_header_named_array(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qfast_header"):
        qfast.save(tmp_path / "t", {"x.qfast_header": np.zeros(3, np.uint8)})


@pytest.mark.parametrize(
    ("tensors", "metadata", "exc", "match"),
    [
        ({"a": [1.0, 2.0]}, None, TypeError, "not list"),
        ({"a": "text"}, None, TypeError, "not str"),
        ({1: np.ones(2)}, None, TypeError, "non-empty str"),
        ({"": np.ones(2)}, None, TypeError, "non-empty str"),
        ([("a", np.ones(2))], None, TypeError, "a dict"),
        ({"a": np.ones(2)}, {"k": 1}, TypeError, "str -> str"),
    ],
)
def test_save_bad_arguments(
    tmp_path: Path, tensors: Any, metadata: Any, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        qfast.save(tmp_path / "t.safetensors", tensors, metadata)
    assert entries(tmp_path) == []


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        qfast.load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        qfast.load(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file" * 5)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        qfast.load(junk)
    good = tmp_path / "good.safetensors"
    qfast.save(good, sample())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        qfast.load(truncated)
    # a QTensor whose header is corrupt: named in the error
    raw = st.load_file(str(good))
    raw["layer.weight.qfast_header"] = np.frombuffer(b"{not json", np.uint8).copy()
    bad = tmp_path / "bad.safetensors"
    st.save_file(raw, str(bad))
    with pytest.raises(ValueError, match=r"'layer\.weight'"):
        qfast.load(bad)


def test_save_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        qfast.save(tmp_path / "no" / "t.safetensors", {"a": np.ones(2)})
    with pytest.raises(IsADirectoryError):
        qfast.save(tmp_path, {"a": np.ones(2)})
    with pytest.raises(OSError, match="qfast"):
        qfast.save("/proc/qfast.safetensors", {"a": np.ones(2)})
    assert entries(tmp_path) == []


def test_save_load_many_qtensors(tmp_path: Path) -> None:
    """Thousands of QTensors: load finds each by its header (and in linear time, not
    quadratic: 3000 tensors well within the test's time)."""
    q = qfast.quantize(np.ones((2, 32), np.float32), 8)
    tensors = {f"layer.{i}.weight": q for i in range(3000)}
    path = tmp_path / "many.safetensors"
    t0 = time.perf_counter()
    qfast.save(path, tensors)
    back = qfast.load(path)
    assert time.perf_counter() - t0 < 60
    assert len(back) == 3000
    assert all(isinstance(v, QTensor) for v in back.values())

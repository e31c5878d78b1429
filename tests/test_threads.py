"""Results never depend on the thread count, nor on concurrent calls from Python threads.

The kernels split work into tasks of 65536 elements (and go parallel from 2**19 elements on),
so the tensors here (1024 x 1024, 3000 x 700, 40 x 60 x 300) are split into many tasks. Run
as a script (``python test_threads.py OUT.npz``) this file saves its results from a fresh
process, so that ``QFAST_NUM_THREADS`` (read at import) is tested too.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import qfast

from reference import reference_quantize, unpack_codes

F32 = np.float32
THREADS = (1, 2, 3, 4)
CONFIGS = {
    "tensor-sym8": (8, True, {}),
    "tensor-asym4": (4, False, {}),
    "axis0-asym8": (8, False, {"axis": 0}),
    "axis0-sym4": (4, True, {"axis": 0}),
    "axis1-sym8": (8, True, {"axis": 1}),
    "axis1-asym2": (2, False, {"axis": -1}),
    "group128-sym4": (4, True, {"group_size": 128}),
    "group100-asym4": (4, False, {"group_size": 100}),
    "group32-sym3": (3, True, {"group_size": 32}),
    "static-sym8": (8, True, {"scale": 0.01}),
}


def big_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(99)
    tall = rng.standard_normal((3000, 700)) * 10.0 ** rng.uniform(-2, 2, (3000, 1))
    tall[1234, 77] = 1e4  # an outlier in one task
    return {
        "square": rng.standard_normal((1024, 1024)).astype(F32),
        "tall": tall.astype(F32),
        "f16-3d": (rng.standard_normal((40, 60, 300)) * 3).astype(np.float16),
    }


def _configs(x: np.ndarray):
    for name, (bits, sym, kw) in CONFIGS.items():
        yield name, bits, sym, kw
    if x.ndim == 3:  # channels whose lines interleave
        yield "axis1of3-asym8", 8, False, {"axis": 1}
        yield "axis-2of3-sym4", 4, True, {"axis": -2}


def results(inputs: dict[str, np.ndarray], snapshot) -> dict[str, np.ndarray]:
    """Codes, grid and dequantized values (float32/16/bf16) of every input and config."""
    out = {}
    for xname, x in inputs.items():
        for name, bits, sym, kw in _configs(x):
            q = qfast.quantize(x, bits, symmetric=sym, **kw)
            out.update(snapshot(q, f"{xname}/{name}/"))
    return out


def nonfinite_input() -> np.ndarray:
    """Non-finite values in several tasks (64 lines each); the first in C order is (130, 999)."""
    x = np.ones((1024, 1024), F32)
    x[1000, 5] = np.nan
    x[700, 1] = np.inf
    x[130, 1000] = np.nan
    x[130, 999] = -np.inf
    x[131, 0] = np.nan
    x[1023, 1023] = np.inf
    return x


@pytest.fixture(scope="module")
def inputs():
    return big_inputs()


@pytest.fixture(scope="module")
def one_thread(inputs, qsnapshot):
    """Everything computed on one thread (the thread count is restored afterwards)."""
    before = qfast.get_num_threads()
    qfast.set_num_threads(1)
    try:
        return results(inputs, qsnapshot)
    finally:
        qfast.set_num_threads(before)


def test_inputs_are_split_into_many_tasks(inputs):
    for x in inputs.values():
        assert x.size >= 10 * 65536


def test_one_thread_matches_the_reference(inputs, one_thread):
    x = inputs["tall"]
    for name in ("tensor-asym4", "axis0-asym8", "group100-asym4", "group32-sym3"):
        bits, sym, kw = CONFIGS[name]
        codes, scale, _ = reference_quantize(x, bits, sym, kw.get("axis"), kw.get("group_size"))
        got = unpack_codes(one_thread[f"tall/{name}/data"], bits, x.shape[-1], sym)
        np.testing.assert_array_equal(got, codes)
        got_scale = one_thread[f"tall/{name}/scale"]
        np.testing.assert_array_equal(got_scale, scale.reshape(got_scale.shape))


@pytest.mark.parametrize("n", THREADS[1:])
def test_thread_count_does_not_change_results(n, inputs, one_thread, same_bytes, qsnapshot):
    qfast.set_num_threads(n)
    assert qfast.get_num_threads() == n
    assert qfast.cpu_info()["num_threads"] == n
    same_bytes(results(inputs, qsnapshot), one_thread, f"{n} threads")


@pytest.mark.parametrize("n", THREADS)
def test_first_non_finite_is_reported_whatever_the_thread_count(n):
    qfast.set_num_threads(n)
    x = nonfinite_input()
    kws = [{}, {"axis": 0}, {"axis": 1}, {"group_size": 128}, {"group_size": 100}, {"scale": 0.1}]
    for kw in kws:
        for sym in (True, False):
            if "scale" in kw and not sym:
                kw = {**kw, "zero_point": 3}
            with pytest.raises(ValueError, match=re.escape("(130, 999)")):
                qfast.quantize(x, 4, symmetric=sym, **kw)
    # The same in a transposed view: its first non-finite element in C order is (0, 131).
    with pytest.raises(ValueError, match=re.escape("(0, 131)")):
        qfast.quantize(x.T, 8, axis=0)
    # A float16 input, channels interleaved (the two-phase path).
    h = np.ones((20, 64, 1024), np.float16)
    h[19, 0, 0] = np.nan
    h[7, 63, 1023] = np.inf
    h[7, 63, 1022] = np.nan
    with pytest.raises(ValueError, match=re.escape("(7, 63, 1022)")):
        qfast.quantize(h, 8, axis=1)


@pytest.mark.parametrize("n", [0, -1, -100])
def test_set_num_threads_rejects_non_positive(n):
    before = qfast.get_num_threads()
    with pytest.raises(ValueError, match="positive"):
        qfast.set_num_threads(n)
    assert qfast.get_num_threads() == before


def thread_maximum() -> int:
    """qfast's maximum thread count, read from the error for a count far above it."""
    with pytest.raises(ValueError, match="maximum") as e:
        qfast.set_num_threads(10**9)
    m = re.search(
        r"maximum of (\d+) threads \(4 x the (\d+) CPUs here, at least 256\)", str(e.value)
    )
    assert m, str(e.value)
    return int(m.group(1))


@pytest.mark.parametrize("n", [5000, 100000, 2**40, 2**63 - 1])
def test_set_num_threads_refuses_absurd_counts_quickly(n):
    """Starting 5000 threads took 16 s: counts above 4 x the CPUs (at least 256) are refused
    at once, with the maximum and the CPU count in the message."""
    before = qfast.get_num_threads()
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"above qfast's maximum of \d+ threads .*pass at most"):
        qfast.set_num_threads(n)
    assert time.perf_counter() - t < 0.5
    assert qfast.get_num_threads() == before


def test_the_thread_maximum_itself_is_accepted():
    top = thread_maximum()
    assert top >= 256
    qfast.set_num_threads(top)
    assert qfast.get_num_threads() == top
    with pytest.raises(ValueError, match=f"num_threads={top + 1} is above"):
        qfast.set_num_threads(top + 1)
    assert qfast.get_num_threads() == top


def test_qfast_num_threads_above_the_maximum_fails_at_import(isa_env, run_python):
    top = thread_maximum()
    t = time.perf_counter()
    proc = run_python(["-c", "import qfast"], isa_env(num_threads=100000))
    assert time.perf_counter() - t < 30
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ValueError" in last and "QFAST_NUM_THREADS=100000" in last, proc.stderr[-2000:]
    assert f"maximum of {top} threads" in last
    ok = run_python(
        ["-c", "import qfast; print(qfast.get_num_threads())"], isa_env(num_threads=top)
    )
    assert ok.returncode == 0 and ok.stdout.split() == [str(top)], ok.stderr[-2000:]


def test_cli_threads_above_the_maximum_is_a_one_line_error(tmp_path, capsys):
    from qfast.cli import main

    st = pytest.importorskip("safetensors.numpy")
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    st.save_file({"w": np.ones((4, 8), np.float32)}, str(src))
    argv = ["quantize", str(src), str(dst), "--threads", "100000"]
    before = qfast.get_num_threads()
    t = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert time.perf_counter() - t < 5
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("qfast: error: --threads:"), err
    assert "maximum of" in err and "CPUs here" in err
    assert qfast.get_num_threads() == before
    assert not dst.exists()


@pytest.mark.parametrize("n", [2.5, "4", None])
def test_set_num_threads_rejects_non_integers(n):
    with pytest.raises(TypeError):
        qfast.set_num_threads(n)


def test_the_thread_count_is_restored_between_tests_part_1(default_num_threads):
    qfast.set_num_threads(3 if default_num_threads != 3 else 2)


def test_the_thread_count_is_restored_between_tests_part_2(default_num_threads):
    assert qfast.get_num_threads() == default_num_threads


def digests(results: dict[str, np.ndarray]) -> dict[str, str]:
    """SHA-256 of each result's dtype, shape and bytes (the results are hundreds of MB)."""
    out = {}
    for key, a in results.items():
        h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
        out[key] = h.hexdigest()
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_qfast_num_threads_variable(n, one_thread, tmp_path, isa_env, run_python):
    path = tmp_path / "out.json"
    proc = run_python([str(Path(__file__).resolve()), str(path)], isa_env(num_threads=n))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(path.read_text())
    assert got.pop("!num_threads") == n
    assert "(130, 999)" in got.pop("!nonfinite")
    want = digests(one_thread)
    assert set(got) == set(want)
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, f"QFAST_NUM_THREADS={n}: {len(bad)} results differ, e.g. {bad[:8]}"


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5", "4x", "99999999999999999999999"])
def test_bad_qfast_num_threads_fails_at_import(value, isa_env, run_python):
    proc = run_python(["-c", "import qfast"], isa_env(num_threads=value))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "QFAST_NUM_THREADS" in last, proc.stderr[-2000:]
    assert value in last
    assert "ValueError" in last


def test_qfast_num_threads_with_spaces_is_accepted(isa_env, run_python):
    proc = run_python(
        ["-c", "import qfast; print(qfast.get_num_threads())"], isa_env(num_threads=" 2 ")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "2"


# --- concurrent calls from Python threads ---------------------------------------------------


def _tasks(snapshot):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((600, 700)) * 5).astype(F32)
    xt = np.ascontiguousarray(x.T)[::-1]  # another layout, another path
    h = x[:300].astype(np.float16)
    codes = rng.integers(-8, 8, (300, 333)).astype(np.int8)
    bad = x.copy()
    bad[400, 3] = np.nan
    bad[100, 650] = np.inf
    q4 = qfast.quantize(x, 4, symmetric=False, group_size=64)
    tasks = []
    for bits in (8, 4, 2, 5):
        for sym in (True, False):
            for kw in ({}, {"axis": 0}, {"axis": 1}, {"group_size": 64}):
                tasks.append(("q", x, bits, sym, kw, snapshot))
                tasks.append(("q", xt, bits, sym, kw, snapshot))
    tasks += [
        ("q", h, 4, True, {"group_size": 32}, snapshot),
        ("q", h.T, 8, False, {"axis": 0}, snapshot),
    ]
    tasks += [("deq", q4, np.float32), ("deq", q4, np.float16), ("pack", codes)] * 3
    tasks += [("err", bad, 8, True, {}), ("err", bad, 4, False, {"axis": 1})] * 2
    return tasks, [x, xt, h, codes, bad]


def _run(task):
    op = task[0]
    if op == "q":
        _, x, bits, sym, kw, snapshot = task
        q = qfast.quantize(x, bits, symmetric=sym, **kw)
        return snapshot(q)
    if op == "deq":
        return {"out": task[1].dequantize(task[2]).view(np.uint8)}
    if op == "pack":
        p = qfast.pack_int4(task[1])
        return {"p": p, "u": qfast.unpack_int4(p, task[1].shape[-1])}
    _, x, bits, sym, kw = task
    try:
        qfast.quantize(x, bits, symmetric=sym, **kw)
    except ValueError as e:
        return {"err": np.frombuffer(str(e).encode(), np.uint8)}
    raise AssertionError("no error")


@pytest.mark.parametrize("churn", [False, True])
def test_concurrent_calls_match_serial(churn, same_bytes, qsnapshot):
    tasks, arrays = _tasks(qsnapshot)
    before = [a.copy() for a in arrays]
    serial = [_run(t) for t in tasks]
    assert b"(100, 650)" in serial[-1]["err"].tobytes()

    def run(i):
        if churn and i % 5 == 0:
            qfast.set_num_threads(1 + i % 4)  # the count changes while others are running
        return _run(tasks[i])

    order = list(range(len(tasks))) * 2
    np.random.default_rng(1).shuffle(order)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, order))
    for i, result in zip(order, got):
        same_bytes(result, serial[i], f"task {i}: {tasks[i][0]}")
    for a, b in zip(arrays, before):
        assert a.tobytes() == b.tobytes()


def _main(path: str) -> None:
    from conftest import snapshot  # (run as a script: tests/ is on sys.path)

    out: dict[str, object] = dict(digests(results(big_inputs(), snapshot)))
    out["!num_threads"] = qfast.get_num_threads()
    try:
        qfast.quantize(nonfinite_input(), 4, axis=1)
        out["!nonfinite"] = ""
    except ValueError as e:
        out["!nonfinite"] = str(e)
    Path(path).write_text(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1])

"""Shared fixtures and helpers for qfast's Python tests.

- ``tests/`` is put on ``sys.path`` explicitly, so test modules can ``from reference import ...``
  whatever pytest's import mode, and subprocesses started by the tests can import them too.
- Every test restores qfast's thread count afterwards (``_restore_num_threads``, autouse).
- ``isa_env`` / ``run_python`` start a fresh interpreter with ``QFAST_ISA`` /
  ``QFAST_NUM_THREADS`` set: qfast reads both once, at import.
- ``snapshot`` / ``assert_same_bytes`` compare results bit for bit (dtype, shape and bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import qfast  # noqa: E402

# The thread count qfast chose at import (QFAST_NUM_THREADS, else all cores).
DEFAULT_NUM_THREADS = qfast.get_num_threads()

# Every path name qfast knows, whether or not this CPU runs it.
ALL_ISAS = ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "neon", "neon-dotprod")


@pytest.fixture(scope="session")
def default_num_threads() -> int:
    """The thread count qfast chose at import."""
    return DEFAULT_NUM_THREADS


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """Puts the default thread count back after each test (tests may change it)."""
    yield
    if qfast.get_num_threads() != DEFAULT_NUM_THREADS:
        qfast.set_num_threads(DEFAULT_NUM_THREADS)


KEEP = "<keep>"  # make_env: leave the variable as this process has it


def make_env(isa: str | None = KEEP, num_threads: str | int | None = KEEP) -> dict[str, str]:
    """A copy of the environment with ``QFAST_ISA`` / ``QFAST_NUM_THREADS`` set, unset (None)
    or left as they are (the default, so a subprocess runs the path this process runs), and
    ``tests/`` on ``PYTHONPATH``."""
    env = dict(os.environ)
    for name, value in (("QFAST_ISA", isa), ("QFAST_NUM_THREADS", num_threads)):
        if value is KEEP:
            continue
        env.pop(name, None)
        if value is not None:
            env[name] = str(value)
    paths = [str(TESTS_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def python(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs ``sys.executable *args`` in a fresh process; returns its exit status and output."""
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(TESTS_DIR),
        check=False,
    )


@pytest.fixture(scope="session")
def isa_env() -> Callable[..., dict[str, str]]:
    """``isa_env(isa, num_threads)``: the environment of a subprocess with ``QFAST_ISA`` and
    ``QFAST_NUM_THREADS`` set (a value), unset (None) or inherited (left out)."""
    return make_env


@pytest.fixture(scope="session")
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_python(args, env)``: ``sys.executable *args`` in a fresh process."""
    return python


@pytest.fixture(scope="session")
def isa_outputs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., dict[str, dict[str, np.ndarray]]]:
    """``isa_outputs(script, num_threads=None)``: runs ``python script OUT.npz`` once per ISA
    path this CPU can run (``QFAST_ISA`` set) and returns each path's arrays by path name; the
    script saves them with ``np.savez(sys.argv[1], ...)``."""

    def run(script: Any, num_threads: str | int | None = KEEP) -> dict[str, dict[str, np.ndarray]]:
        tmp = tmp_path_factory.mktemp("isa")
        out = {}
        for isa in qfast.cpu_info()["available"]:
            path = tmp / f"{isa}.npz"
            proc = python([str(script), str(path)], make_env(isa, num_threads))
            assert proc.returncode == 0, f"QFAST_ISA={isa}: {proc.stderr}"
            with np.load(path) as f:
                out[isa] = {k: f[k] for k in f.files}
        return out

    return run


def snapshot(q: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Everything a QTensor holds and gives back (codes, grid, dequantized values)."""
    import ml_dtypes

    out = {
        prefix + "data": np.asarray(q.data),
        prefix + "scale": np.asarray(q.scale),
        prefix + "deq32": q.dequantize(),
        prefix + "deq16": q.dequantize(np.float16).view(np.uint16),
        prefix + "deqbf16": q.dequantize(ml_dtypes.bfloat16).view(np.uint16),
    }
    if q.zero_point is not None:
        out[prefix + "zero_point"] = np.asarray(q.zero_point)
    return out


def assert_same_bytes(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str = ""):
    """Same keys; per key the same dtype, shape and bytes."""
    assert sorted(got) == sorted(want), f"{what}: different entries"
    bad = []
    for key in sorted(want):
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            bad.append(key)
    assert not bad, f"{what}: {len(bad)} entries differ, e.g. {bad[:8]}"


@pytest.fixture(scope="session")
def same_bytes() -> Callable[..., None]:
    """``same_bytes(got, want, what)``: dicts of arrays equal bit for bit."""
    return assert_same_bytes


@pytest.fixture(scope="session")
def qsnapshot() -> Callable[..., dict[str, np.ndarray]]:
    """``qsnapshot(q, prefix)``: a QTensor's codes, grid and dequantized values as arrays."""
    return snapshot

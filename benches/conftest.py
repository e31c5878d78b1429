"""Shared pieces of qfast's benchmarks: timing, ONNX Runtime sessions, the summary table.

Run them with `make bench` (JSON in .benchmarks/latest.json), or the fast subset with
`python -m pytest benches -k "not 14336" --benchmark-enable --benchmark-only -p no:randomly`.
Without `--benchmark-enable` (the default) each benchmark body runs once, as a smoke test.

The matmul / linear benchmarks' "cold" cases (a weight working set of at least 4x the last-level
cache, and the DRAM read-bandwidth yardstick) run only with `--benchmark-enable`, or when
QFAST_BENCH_COLD=1; QFAST_BENCH_COLD=0 skips them in any mode (as does `-k "not cold"`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import qfast

# Every tensor is 4096 x 4096 or larger: few rounds, each one call.
LARGE_ELEMENTS = 20_000_000
ROUNDS_SMALL = 7
ROUNDS_LARGE = 3
ONNX_OPSET = 21  # blocked (group-wise) and int4 QuantizeLinear / DequantizeLinear
MS_DOMAIN = ("com.microsoft", 1)  # ONNX Runtime's contrib ops (MatMulNBits, DynamicQuantizeMatMul)
COLD_ENV = "QFAST_BENCH_COLD"
LLC_FALLBACK = 32 << 20  # where the cache sizes cannot be read
COLD_FACTOR = 4  # the cold cases' working set, in last-level caches
COLD_MAX_BYTES = 1_800_000_000  # and at most this (see cold_copies)


def _load_bench_table() -> Any:
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_table.py"
    spec = importlib.util.spec_from_file_location("qfast_bench_table", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "large: the 4096x14336 cases (skip them with -k 'not 14336')"
    )
    config.addinivalue_line(
        "markers",
        f"cold: weight working set >= 4x the last-level cache (run with --benchmark-enable "
        f"or {COLD_ENV}=1)",
    )


def last_level_cache_bytes() -> int:
    """The largest data or unified cache cpu0 reports (Linux sysfs), else LLC_FALLBACK."""
    best = (0, 0)
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or not size:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1].upper(), 1)
        digits = size[:-1] if size[-1].isalpha() else size
        best = max(best, (level, int(digits) * scale))
    return best[1] or LLC_FALLBACK


def memory_bytes() -> int:
    """Physical memory, for capping the cold working sets (0 where unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["qfast"] = {**qfast.cpu_info(), "version": qfast.__version__}
    machine_info["onnxruntime"] = ort.__version__
    machine_info["numpy"] = np.__version__
    machine_info["last_level_cache_bytes"] = last_level_cache_bytes()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b.as_dict(include_data=False) for b in getattr(session, "benchmarks", ()) if b]
    if not benchmarks:
        return
    table = _load_bench_table()
    groups = table.group_rows(benchmarks)
    if not groups:
        return
    terminalreporter.write_sep("=", "qfast vs NumPy / ONNX Runtime / X.copy() (median)")
    machine_info = session.get_machine_info()
    terminalreporter.write_line(table.describe_machine(machine_info))
    for line in table.report(groups, machine_info=machine_info).splitlines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def all_threads() -> int:
    """qfast's default thread count (QFAST_NUM_THREADS or every core), read before any test."""
    return qfast.get_num_threads()


@pytest.fixture(scope="session")
def thread_count(all_threads: int) -> Callable[[str], tuple[int, str]]:
    """``thread_count("1t" | "all")`` -> (threads, "N thread(s)") for the GEMM benchmarks."""

    def count(t: str) -> tuple[int, str]:
        n = 1 if t == "1t" else all_threads
        return n, f"{n} thread" + ("s" if n > 1 else "")

    return count


@pytest.fixture(scope="session")
def cold_enabled(request: pytest.FixtureRequest) -> bool:
    """Whether the cold (beyond-LLC) cases run: --benchmark-enable, unless QFAST_BENCH_COLD says."""
    env = os.environ.get(COLD_ENV, "")
    if env in ("0", "1"):
        return env == "1"
    session = getattr(request.config, "_benchmarksession", None)
    return session is not None and not session.disabled


@pytest.fixture(scope="session")
def llc_bytes() -> int:
    return last_level_cache_bytes()


@pytest.fixture(scope="session")
def cold_copies(llc_bytes: int) -> Callable[[int], tuple[int, str]]:
    """``cold_copies(nbytes)``: (copies, note) for a working set of >= 4x the LLC.

    Capped at 1/8 of RAM (ONNX Runtime's session creation briefly holds ~3 copies of its
    initializers) and at COLD_MAX_BYTES (the cold ORT models hold every copy, and a
    serialized ONNX model must stay under protobuf's 2 GiB); the note gives the working set in
    LLCs and says when it was capped.
    """
    ram = memory_bytes()
    limit = min(COLD_MAX_BYTES, ram // 8) if ram else COLD_MAX_BYTES

    def copies(nbytes: int) -> tuple[int, str]:
        n = max(2, math.ceil(COLD_FACTOR * llc_bytes / nbytes))
        if n * nbytes > limit:
            n = max(2, limit // nbytes)
            return n, f"{n} copies, {n * nbytes / llc_bytes:.1f}x LLC (capped)"
        return n, f"{n} copies, {n * nbytes / llc_bytes:.1f}x LLC"

    return copies


@pytest.fixture(scope="session")
def peak_gmacs() -> dict[str, float]:
    """qfast's measured one-thread peak (G MAC/s) of each inner-loop mix on the active path
    ("int8": 8-bit panels, "w4a8": 4-bit panels), 0.0 where the path has no loop for it."""
    return {mix: float(qfast._qfast.peak_gmacs(mix) or 0.0) for mix in ("int8", "w4a8")}


def _openblas_thread_setter() -> Callable[[int], None] | None:
    """OpenBLAS's set_num_threads from the library NumPy loaded (as threadpoolctl finds it)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()})
    names = (
        "scipy_openblas_set_num_threads64_",
        "scipy_openblas_set_num_threads",
        "openblas_set_num_threads64_",
        "openblas_set_num_threads",
    )
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                return fn
    return None


@pytest.fixture(scope="session", autouse=True)
def blas_threads(
    all_threads: int,
) -> Iterator[Callable[[int], contextlib.AbstractContextManager[bool]]]:
    """``with blas_threads(n) as ok:`` runs NumPy's BLAS (OpenBLAS) on n threads.

    Outside such a block the BLAS runs on one thread for the whole session: an OpenBLAS worker
    busy-waits for a while after each call, so a reference product on all threads would take a
    core from the benchmark timed next. ``ok`` is False where the BLAS's thread count cannot be
    set (it then runs as it does by default).
    """
    np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)  # load the BLAS
    setter = _openblas_thread_setter()
    if setter is not None:
        setter(1)

    @contextlib.contextmanager
    def use(n: int) -> Iterator[bool]:
        if setter is None:
            yield False
            return
        setter(n)
        try:
            yield True
        finally:
            setter(1)

    yield use
    if setter is not None:
        setter(all_threads)


@pytest.fixture
def run_bench(benchmark: Any, all_threads: int) -> Callable[..., Any]:
    """Times `fn` in its operation's group and records what the summary table needs.

    Call as ``run_bench(fn, op=, scheme=, shape=, dtype=, impl=, kind=, threads=None, **info)``;
    ``kind`` is qfast, qfast_out (into a reused array), numpy, ort or copy (dram for the
    bandwidth yardstick); ``threads`` sets qfast's pool for this benchmark. With ``target_s``
    (timed runs only) ``fn`` runs twice first, as a warm-up and to size the rounds to about
    ``target_s`` seconds in all (at least ROUNDS_LARGE).
    Returns ``fn``'s result (with --benchmark-disable, ``fn`` runs exactly once).
    """

    def run(
        fn: Callable[[], Any],
        *,
        op: str,
        scheme: str,
        shape: tuple[int, ...],
        dtype: str,
        impl: str,
        kind: str,
        threads: int | None = None,
        target_s: float | None = None,
        **info: Any,
    ) -> Any:
        elements = int(np.prod(shape))
        shape_id = "x".join(str(d) for d in shape)
        benchmark.group = f"{op} {scheme} {dtype} {shape_id}"
        benchmark.extra_info.update(
            op=op,
            scheme=scheme,
            shape=shape_id,
            dtype=dtype,
            impl=impl,
            kind=kind,
            elements=elements,
            threads=threads or 1,
            **info,
        )
        rounds = ROUNDS_LARGE if elements > LARGE_ELEMENTS else ROUNDS_SMALL
        if threads is not None:
            qfast.set_num_threads(threads)
        try:
            if target_s is not None and benchmark.enabled:
                fn()  # warm-up: first-call work such as weight prepacking
                start = time.perf_counter()
                fn()
                once = max(time.perf_counter() - start, 1e-7)
                rounds = min(max(math.ceil(target_s / once), ROUNDS_LARGE), 10_000)
            return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
        finally:
            if threads is not None:
                qfast.set_num_threads(all_threads)

    return run


def _ort_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence[int | str]]],
    outputs: Sequence[tuple[str, int, Sequence[int | str]]],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    domains: Sequence[tuple[str, int]] = (),
    check: bool = True,
) -> bytes:
    """A serialized ONNX model of `nodes`, checked by onnx.checker unless `check` is False.

    `inputs` and `outputs` are (name, TensorProto type, shape; a str is a symbolic dimension);
    `domains` are extra opset imports such as MS_DOMAIN.
    """
    ins = [helper.make_tensor_value_info(name, elem, list(dims)) for name, elem, dims in inputs]
    outs = [helper.make_tensor_value_info(name, elem, list(dims)) for name, elem, dims in outputs]
    graph = helper.make_graph(list(nodes), "bench", ins, outs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", ONNX_OPSET)]
    opsets += [helper.make_opsetid(domain, version) for domain, version in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    if check:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_load(model: bytes, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of `model` on `threads` intra-op threads.

    Graph optimisations are off, so an op on initializers is not constant-folded away
    (kernels still prepack their constant weights when the session is created).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _ort_session(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence[int | str]]],
    outputs: Sequence[tuple[str, int, Sequence[int | str]]],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    domains: Sequence[tuple[str, int]] = (),
    threads: int = 1,
) -> ort.InferenceSession:
    """_ort_load(_ort_model(...), threads): a session over `nodes`, model checked."""
    return _ort_load(_ort_model(nodes, inputs, outputs, initializers, domains=domains), threads)


def _ort_bind(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: Sequence[str]
) -> Callable[[], Any]:
    """A runner of `session` on `feeds` (IO binding); it returns the binding.

    Outputs stay in ONNX Runtime's memory, so the time is the op's, not a conversion to
    NumPy's, and int4 outputs need no NumPy type (``binding.copy_outputs_to_cpu()`` reads them).
    """
    binding = session.io_binding()
    for name, arr in feeds.items():
        binding.bind_cpu_input(name, arr)
    for name in outputs:
        binding.bind_output(name, "cpu")

    def run() -> Any:
        # `feeds` must outlive the session: the binding points at the arrays' memory.
        assert feeds is not None
        session.run_with_iobinding(binding)
        return binding

    return run


def _ort_runner(
    nodes: Sequence[onnx.NodeProto],
    feeds: dict[str, np.ndarray],
    outputs: Sequence[tuple[str, int, Sequence[int]]],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    domains: Sequence[tuple[str, int]] = (),
    threads: int = 1,
) -> Callable[[], Any]:
    """A one-thread (by default) ONNX Runtime session over `nodes`, bound to `feeds`.

    The graph's inputs are `feeds` (types and shapes from the arrays); `outputs` are
    (name, TensorProto type, shape). See _ort_session and _ort_bind.
    """
    inputs = [
        (name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))
        for name, arr in feeds.items()
    ]
    session = _ort_session(nodes, inputs, outputs, initializers, domains=domains, threads=threads)
    return _ort_bind(session, feeds, [name for name, *_ in outputs])


@pytest.fixture(scope="session")
def ort_runner() -> Callable[..., Callable[[], Any]]:
    """``ort_runner(nodes, feeds, outputs, initializers=())``: a one-thread ORT runner."""
    return _ort_runner


@pytest.fixture(scope="session")
def ort_session() -> Callable[..., ort.InferenceSession]:
    """``ort_session(nodes, inputs, outputs, initializers=(), domains=(), threads=1)``."""
    return _ort_session


@pytest.fixture(scope="session")
def ort_model() -> Callable[..., bytes]:
    """``ort_model(nodes, inputs, outputs, initializers=(), domains=(), check=True)``: bytes."""
    return _ort_model


@pytest.fixture(scope="session")
def ort_load() -> Callable[..., ort.InferenceSession]:
    """``ort_load(model_bytes, threads=1)``: a session of a serialized model."""
    return _ort_load


@pytest.fixture(scope="session")
def ort_bind() -> Callable[..., Callable[[], Any]]:
    """``ort_bind(session, feeds, output_names)``: a runner of one session on one input set."""
    return _ort_bind

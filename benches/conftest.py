"""Shared pieces of qfast's benchmarks: timing, ONNX Runtime sessions, the summary table.

Run them with `make bench` (JSON in .benchmarks/latest.json), or the fast subset with
`python -m pytest benches -k "not 14336" --benchmark-enable --benchmark-only -p no:randomly`.
Without `--benchmark-enable` (the default) each benchmark body runs once, as a smoke test.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
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


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["qfast"] = {**qfast.cpu_info(), "version": qfast.__version__}
    machine_info["onnxruntime"] = ort.__version__
    machine_info["numpy"] = np.__version__


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
    terminalreporter.write_line(table.describe_machine(session.get_machine_info()))
    for line in table.markdown(groups).splitlines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def all_threads() -> int:
    """qfast's default thread count (QFAST_NUM_THREADS or every core), read before any test."""
    return qfast.get_num_threads()


@pytest.fixture
def run_bench(benchmark: Any, all_threads: int) -> Callable[..., Any]:
    """Times `fn` in its operation's group and records what the summary table needs.

    Call as ``run_bench(fn, op=, scheme=, shape=, dtype=, impl=, kind=, threads=None, **info)``;
    ``kind`` is qfast, qfast_out (into a reused array), numpy, ort or copy; ``threads`` sets
    qfast's pool for this benchmark.
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
            return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
        finally:
            if threads is not None:
                qfast.set_num_threads(all_threads)

    return run


def _ort_runner(
    nodes: Sequence[onnx.NodeProto],
    feeds: dict[str, np.ndarray],
    outputs: Sequence[tuple[str, int, Sequence[int]]],
    initializers: Sequence[onnx.TensorProto] = (),
) -> Callable[[], Any]:
    """A one-thread ONNX Runtime session over `nodes`, bound to `feeds`; returns its runner.

    The graph's inputs are `feeds` (types and shapes from the arrays); `outputs` are
    (name, TensorProto type, shape). Outputs stay in ONNX
    Runtime's memory (IO binding), so the time is the op's, not a conversion to NumPy's, and
    int4 outputs need no NumPy type. Graph optimisations are off, so an op on initializers is
    not constant-folded away.
    """
    inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)
        )
        for name, arr in feeds.items()
    ]
    outs = [helper.make_tensor_value_info(name, elem, list(dims)) for name, elem, dims in outputs]
    graph = helper.make_graph(list(nodes), "bench", inputs, outs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    binding = session.io_binding()
    for name, arr in feeds.items():
        binding.bind_cpu_input(name, arr)
    for name, *_ in outputs:
        binding.bind_output(name, "cpu")

    def run() -> Any:
        # `feeds` must outlive the session: the binding points at the arrays' memory.
        assert feeds is not None
        session.run_with_iobinding(binding)
        return binding

    return run


@pytest.fixture(scope="session")
def ort_runner() -> Callable[..., Callable[[], Any]]:
    """``ort_runner(nodes, feeds, outputs, initializers=())``: a one-thread ORT runner."""
    return _ort_runner

"""Prints qfast's benchmark results as a Markdown table (for the README).

    make bench                                        # writes .benchmarks/latest.json
    python scripts/bench_table.py                     # reads .benchmarks/latest.json
    python scripts/bench_table.py path/to/results.json > table.md
    python scripts/bench_table.py --summary            # one row per group (the README's table)

One row per benchmark, grouped as the benchmarks are (operation, shape, dtype). "G elem/s" is
logical elements per second from the benchmark's median time; "x NumPy", "x ORT" and "x copy"
divide it by the throughput of, in the same group, the NumPy implementation, the fastest ONNX
Runtime op, and `X.copy()` of the float32 tensor (the memory-bandwidth yardstick). Above 1 means
faster than the baseline. For quantize the dtype is the input's, for dequantize the output's.

benches/conftest.py loads this file to print the same table at the end of a benchmark run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(".benchmarks/latest.json")
COLUMNS = ("operation", "shape", "dtype", "impl", "G elem/s", "x NumPy", "x ORT", "x copy")
_KIND_ORDER = {"qfast": 0, "qfast_out": 0, "numpy": 1, "ort": 2, "copy": 3}
_OP_ORDER = {"quantize": 0, "dequantize": 1}


@dataclass
class Row:
    operation: str
    shape: str
    dtype: str
    impl: str
    kind: str
    threads: int
    elements: int
    median_s: float

    @property
    def elem_per_s(self) -> float:
        return self.elements / self.median_s if self.median_s > 0 else float("inf")


def _row(bench: dict[str, Any]) -> Row | None:
    info = bench.get("extra_info") or {}
    stats = bench.get("stats") or bench  # --benchmark-json nests them; flat dicts do not
    if "kind" not in info or "median" not in stats:
        return None
    return Row(
        operation=f"{info['op']} {info['scheme']}",
        shape=str(info["shape"]),
        dtype=str(info["dtype"]),
        impl=str(info["impl"]),
        kind=str(info["kind"]),
        threads=int(info.get("threads") or 1),
        elements=int(info["elements"]),
        median_s=float(stats["median"]),
    )


def _group_key(row: Row) -> tuple[Any, ...]:
    op = row.operation.split(" ", 1)[0]
    return (_OP_ORDER.get(op, 9), row.operation, row.elements, row.dtype != "float32")


def group_rows(benchmarks: Iterable[dict[str, Any]]) -> list[list[Row]]:
    """Rows of qfast's benchmarks (dicts as in pytest-benchmark's JSON), one list per group."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for bench in benchmarks:
        row = _row(bench)
        if row is not None:
            groups.setdefault((row.operation, row.shape, row.dtype), []).append(row)
    ordered = sorted(groups.values(), key=lambda rows: _group_key(rows[0]))
    return [
        sorted(rows, key=lambda r: (_KIND_ORDER.get(r.kind, 9), r.threads, r.impl))
        for rows in ordered
    ]


def _ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.2f}"


def table_cells(groups: Sequence[Sequence[Row]]) -> list[list[str]]:
    """The table's cells, one list per row, ratios computed within each group."""
    cells = []
    for rows in groups:
        speed = {id(r): r.elem_per_s for r in rows}
        numpy = max((speed[id(r)] for r in rows if r.kind == "numpy"), default=None)
        ort = max((speed[id(r)] for r in rows if r.kind == "ort"), default=None)
        copy = max((speed[id(r)] for r in rows if r.kind == "copy"), default=None)
        for r in rows:
            s = speed[id(r)]
            cells.append(
                [
                    r.operation,
                    r.shape,
                    r.dtype,
                    r.impl,
                    f"{s / 1e9:.3f}",
                    _ratio(s, numpy),
                    _ratio(s, ort),
                    _ratio(s, copy),
                ]
            )
    return cells


SUMMARY_COLUMNS = (
    "operation",
    "shape",
    "dtype",
    "qfast 1T",
    "qfast all",
    "1T out=",
    "NumPy",
    "best ORT",
    "copy",
    "1T x NumPy",
    "1T x ORT",
    "1T time / copy",
)


def summary_cells(groups: Sequence[Sequence[Row]]) -> list[list[str]]:
    """One row per group: G elem/s of each implementation, and qfast-on-one-thread's ratios."""
    cells = []
    for rows in groups:

        def best(kind: str, threads: int | None = None, rows: Sequence[Row] = rows) -> float:
            speeds = [
                r.elem_per_s
                for r in rows
                if r.kind == kind and (threads is None or (r.threads == 1) == (threads == 1))
            ]
            return max(speeds, default=0.0)

        one, many, into = best("qfast", 1), best("qfast", 2), best("qfast_out")
        numpy, ort, copy = best("numpy"), best("ort"), best("copy")
        r = rows[0]
        cells.append(
            [
                r.operation,
                r.shape,
                r.dtype,
                *(f"{v / 1e9:.2f}" if v else "-" for v in (one, many, into, numpy, ort, copy)),
                _ratio(one, numpy),
                _ratio(one, ort),
                _ratio(copy, one),
            ]
        )
    return cells


def markdown(
    groups: Sequence[Sequence[Row]], columns: Sequence[str] = COLUMNS, summary: bool = False
) -> str:
    """A Markdown table, padded so that it also reads well as plain text."""
    cells = summary_cells(groups) if summary else table_cells(groups)
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [False] * (3 if summary else 4) + [True] * (len(columns) - (3 if summary else 4))

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    # Right-aligned numbers (`---:`), left-aligned text (`:---`).
    dashes = [
        "-" * (w + 1) + ":" if num else ":" + "-" * (w + 1) for w, num in zip(widths, numeric)
    ]
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([line(columns), rule, *(line(row) for row in cells)])


def describe_machine(machine_info: dict[str, Any]) -> str:
    """One line: the CPU and the ISA path qfast used."""
    qfast = machine_info.get("qfast") or {}
    cpu = (machine_info.get("cpu") or {}).get("brand_raw", machine_info.get("processor", "?"))
    return (
        f"CPU: {cpu}; qfast ISA path: {qfast.get('isa', '?')}, "
        f"all threads = {qfast.get('num_threads', '?')}; ONNX Runtime: 1 thread"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    summary = "--summary" in args
    args = [a for a in args if a != "--summary"]
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__)
        return 2
    path = Path(args[0]) if args else DEFAULT_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"{path} not found; run `make bench` first", file=sys.stderr)
        return 1
    groups = group_rows(data.get("benchmarks", []))
    if not groups:
        print(f"{path} holds no qfast benchmarks", file=sys.stderr)
        return 1
    print(describe_machine(data.get("machine_info") or {}))
    print()
    if summary:
        print(markdown(groups, SUMMARY_COLUMNS, summary=True))
    else:
        print(markdown(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())

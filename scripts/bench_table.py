"""Prints qfast's benchmark results as a Markdown table (for the README).

    make bench                                        # writes .benchmarks/latest.json
    python scripts/bench_table.py                     # reads .benchmarks/latest.json
    python scripts/bench_table.py path/to/results.json > table.md
    python scripts/bench_table.py --summary            # one row per group (the README's table)
    python scripts/bench_table.py --summary --one-thread .benchmarks/gemm.json   # 1-thread rows

One row per benchmark, grouped as the benchmarks are (operation, shape, dtype). "G elem/s" is
logical elements per second from the benchmark's median time; "x NumPy", "x ORT" and "x copy"
divide it by the throughput of, in the same group, the NumPy implementation, the fastest ONNX
Runtime op, and `X.copy()` of the float32 tensor (the memory-bandwidth yardstick). Above 1 means
faster than the baseline. For quantize the dtype is the input's, for dequantize the output's.

matmul_int8 and linear (benches/test_matmul.py, benches/test_linear.py) have tables of their
own, in G MAC/s (multiply-accumulates per second; shapes are MxKxN), one row per group and
thread count in the summary: qfast against NumPy float32 (its own group of the same shape and
thread count), the best ONNX Runtime op with int8 compute (MatMulInteger,
DynamicQuantizeMatMul, MatMulNBits accuracy_level 4) and with float compute (MatMulNBits
accuracy_level 0), each on the same number of threads, and "% peak": qfast's share of
peak_gmacs(mix) (the one-thread register-only peak of the inner-loop mix that ran, "int8" or
"w4a8") times its threads. The "cold" rows (M = 1, weights >= 4x the last-level cache per
call) add GB/s of weight bytes and "x DRAM": that over the DRAM read bandwidth (X.max())
measured on as many threads.

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
_KIND_ORDER = {"qfast": 0, "qfast_out": 0, "numpy": 1, "ort": 2, "copy": 3, "dram": 4}
_OP_ORDER = {"quantize": 0, "dequantize": 1, "matmul_int8": 2, "linear": 3, "dram": 4}
GEMM_OPS = ("matmul_int8", "linear")
_SCHEME_ORDER = ("u8s8", "s8s8", "W8A8", "W4A8 g32", "W4A8 g128", "W4A16 g32", "W4A16 g128")


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
    op: str = ""
    scheme: str = ""
    macs: int = 0  # per call (matmul_int8, linear)
    weight_bytes: int = 0  # B / W bytes read per call (bytes read for the DRAM yardstick)
    peer: str = ""  # an ORT row's compute: "int8" or "float"
    peak_gmacs: float = 0.0  # qfast rows: the one-thread int8 dot-product peak
    copies: int = 1  # cold rows: distinct weights per call

    @property
    def elem_per_s(self) -> float:
        return self.elements / self.median_s if self.median_s > 0 else float("inf")

    @property
    def gmacs(self) -> float:
        return self.macs / self.median_s / 1e9 if self.median_s > 0 else float("inf")

    @property
    def gbps(self) -> float:
        return self.weight_bytes / self.median_s / 1e9 if self.median_s > 0 else float("inf")

    @property
    def is_gemm(self) -> bool:
        return self.op in GEMM_OPS or self.kind == "dram"

    @property
    def cold(self) -> bool:
        return self.dtype == "cold"


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
        op=str(info["op"]),
        scheme=str(info["scheme"]),
        macs=int(info.get("macs") or 0),
        weight_bytes=int(info.get("weight_bytes") or 0),
        peer=str(info.get("peer") or ""),
        peak_gmacs=float(info.get("peak_gmacs") or 0.0),
        copies=int(info.get("copies") or 1),
    )


def _dims(shape: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in shape.split("x"))
    except ValueError:
        return ()


def _scheme_rank(scheme: str) -> int:
    ranks = [i for i, prefix in enumerate(_SCHEME_ORDER) if scheme.startswith(prefix)]
    return ranks[-1] if ranks else len(_SCHEME_ORDER)


def _group_key(row: Row) -> tuple[Any, ...]:
    op = row.operation.split(" ", 1)[0]
    if row.is_gemm:
        dims = _dims(row.shape)
        m, kn = (dims[0], dims[1:]) if len(dims) == 3 else (0, dims)
        return (_OP_ORDER.get(op, 9), row.cold, kn, m, _scheme_rank(row.scheme), row.operation)
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


def _render(columns: Sequence[str], cells: Sequence[Sequence[str]], text_columns: int) -> str:
    """A padded Markdown table; the first `text_columns` columns left-aligned, numbers right."""
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [i >= text_columns for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    dashes = [
        "-" * (w + 1) + ":" if num else ":" + "-" * (w + 1) for w, num in zip(widths, numeric)
    ]
    return "\n".join([line(columns), "|" + "|".join(dashes) + "|", *(line(r) for r in cells)])


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value else "-"


class _Peers:
    """The yardsticks for matmul/linear rows, looked up across groups."""

    def __init__(self, groups: Sequence[Sequence[Row]]) -> None:
        rows = [r for g in groups for r in g]
        self.numpy: dict[tuple[str, str, str, bool], float] = {}
        self.dram: dict[bool, float] = {}
        for r in rows:
            if r.kind == "numpy" and r.op in GEMM_OPS:
                key = (r.op, r.shape, r.dtype, r.threads > 1)
                self.numpy[key] = max(self.numpy.get(key, 0.0), r.gmacs)
            elif r.kind == "dram":
                self.dram[r.threads > 1] = max(self.dram.get(r.threads > 1, 0.0), r.gbps)

    def numpy_gmacs(self, r: Row) -> float:
        return self.numpy.get((r.op, r.shape, r.dtype, r.threads > 1), 0.0)

    def dram_gbps(self, r: Row) -> float:
        return self.dram.get(r.threads > 1, 0.0)


def _best(rows: Sequence[Row], many: bool, kind: str, peer: str | None = None) -> Row | None:
    found = [
        r
        for r in rows
        if r.kind == kind and (r.threads > 1) == many and (peer is None or r.peer == peer)
    ]
    return max(found, key=lambda r: r.gmacs, default=None)


def _pct_peak(r: Row) -> str:
    return f"{100 * r.gmacs / (r.peak_gmacs * r.threads):.0f}%" if r.peak_gmacs else "-"


def _shape(r: Row) -> str:
    return f"{r.shape} x{r.copies}" if r.cold else r.shape


GEMM_COLUMNS = (
    "operation",
    "MxKxN",
    "data",
    "impl",
    "G MAC/s",
    "GB/s",
    "x NumPy",
    "x ORT int8",
    "x ORT float",
    "% peak",
    "x DRAM",
)


def gemm_table_cells(groups: Sequence[Sequence[Row]]) -> list[list[str]]:
    """matmul/linear rows one by one; ratios against the yardsticks on as many threads."""
    peers = _Peers(groups)
    cells = []
    for rows in groups:
        for r in rows:
            if r.kind == "dram":
                cells.append(
                    [r.operation, r.shape, r.dtype, r.impl, "-", _fmt(r.gbps), *("-",) * 5]
                )
                continue
            many = r.threads > 1
            ort_int8, ort_float = (
                _best(rows, many, "ort", "int8"),
                _best(rows, many, "ort", "float"),
            )
            cells.append(
                [
                    r.operation,
                    _shape(r),
                    r.dtype,
                    r.impl,
                    f"{r.gmacs:.2f}",
                    _fmt(r.gbps),
                    _ratio(r.gmacs, peers.numpy_gmacs(r)),
                    _ratio(r.gmacs, ort_int8.gmacs if ort_int8 else None),
                    _ratio(r.gmacs, ort_float.gmacs if ort_float else None),
                    _pct_peak(r) if r.kind == "qfast" else "-",
                    _ratio(r.gbps, peers.dram_gbps(r)) if r.cold else "-",
                ]
            )
    return cells


GEMM_SUMMARY_COLUMNS = (
    "operation",
    "MxKxN",
    "threads",
    "qfast",
    "NumPy f32",
    "ORT int8",
    "ORT float",
    "x NumPy",
    "x ORT int8",
    "x ORT float",
    "% peak",
)
COLD_SUMMARY_COLUMNS = (
    "operation",
    "MxKxN x copies",
    "threads",
    "MB/call",
    "qfast GB/s",
    "NumPy GB/s",
    "ORT int8 GB/s",
    "ORT float GB/s",
    "DRAM GB/s",
    "x DRAM",
    "qfast G MAC/s",
    "x NumPy",
    "x ORT int8",
    "x ORT float",
)


def _summary_rows(groups: Sequence[Sequence[Row]], cold: bool) -> list[tuple[Row, Sequence[Row]]]:
    """(qfast's row, its group) per group and thread count, warm or cold groups."""
    out = []
    for rows in groups:
        if not rows or not rows[0].is_gemm or rows[0].cold != cold:
            continue
        for many in (False, True):
            q = _best(rows, many, "qfast")
            if q is not None:
                out.append((q, rows))
    return out


def gemm_summary_cells(groups: Sequence[Sequence[Row]]) -> list[list[str]]:
    """One row per warm matmul/linear group and thread count, in G MAC/s."""
    peers = _Peers(groups)
    cells = []
    for q, rows in _summary_rows(groups, cold=False):
        many = q.threads > 1
        numpy = peers.numpy_gmacs(q)
        ort_int8, ort_float = _best(rows, many, "ort", "int8"), _best(rows, many, "ort", "float")
        i8 = ort_int8.gmacs if ort_int8 else 0.0
        fl = ort_float.gmacs if ort_float else 0.0
        cells.append(
            [
                q.operation,
                q.shape,
                str(q.threads),
                f"{q.gmacs:.2f}",
                _fmt(numpy),
                _fmt(i8),
                _fmt(fl),
                _ratio(q.gmacs, numpy),
                _ratio(q.gmacs, i8),
                _ratio(q.gmacs, fl),
                _pct_peak(q),
            ]
        )
    return cells


def cold_summary_cells(groups: Sequence[Sequence[Row]]) -> list[list[str]]:
    """One row per cold (beyond-LLC) group and thread count: weight GB/s against DRAM's."""
    peers = _Peers(groups)
    numpy_rows = {
        (r.op, r.shape, r.threads > 1): r
        for g in groups
        for r in g
        if r.kind == "numpy" and r.cold and r.op in GEMM_OPS
    }
    cells = []
    for q, rows in _summary_rows(groups, cold=True):
        many = q.threads > 1
        numpy = numpy_rows.get((q.op, q.shape, many))
        ort_int8, ort_float = _best(rows, many, "ort", "int8"), _best(rows, many, "ort", "float")
        dram = peers.dram_gbps(q)
        cells.append(
            [
                q.operation,
                _shape(q),
                str(q.threads),
                f"{q.weight_bytes / 1e6:.0f}",
                f"{q.gbps:.2f}",
                _fmt(numpy.gbps if numpy else 0.0),
                _fmt(ort_int8.gbps if ort_int8 else 0.0),
                _fmt(ort_float.gbps if ort_float else 0.0),
                _fmt(dram),
                _ratio(q.gbps, dram),
                f"{q.gmacs:.2f}",
                _ratio(q.gmacs, numpy.gmacs if numpy else None),
                _ratio(q.gmacs, ort_int8.gmacs if ort_int8 else None),
                _ratio(q.gmacs, ort_float.gmacs if ort_float else None),
            ]
        )
    return cells


def describe_gemm(groups: Sequence[Sequence[Row]], machine_info: dict[str, Any]) -> str:
    """One line: qfast's int8 peak, the last-level cache and the measured DRAM bandwidth."""
    rows = [r for g in groups for r in g]
    peak = max((r.peak_gmacs for r in rows), default=0.0)
    dram = _Peers(groups).dram
    llc = machine_info.get("last_level_cache_bytes")
    parts = [
        "matmul_int8 / linear: G MAC/s (median); ONNX Runtime and NumPy on the threads shown",
        f"qfast int8 peak (1 thread, register-only) {peak:.1f} G MAC/s" if peak else "no peak",
    ]
    if llc:
        parts.append(f"LLC {int(llc) / 2**20:.0f} MiB")
    if dram:
        parts.append(
            "DRAM read "
            + ", ".join(f"{v:.1f} GB/s ({'all' if k else '1'} T)" for k, v in dram.items())
        )
    return "; ".join(parts)


def report(
    groups: Sequence[Sequence[Row]],
    summary: bool = False,
    gemm_detail: bool = False,
    machine_info: dict[str, Any] | None = None,
) -> str:
    """Every table the groups call for: quantize/dequantize, then matmul_int8/linear."""
    elementwise = [g for g in groups if g and not g[0].is_gemm]
    gemm = [g for g in groups if g and g[0].is_gemm]
    parts = []
    if elementwise:
        if summary:
            parts.append(markdown(elementwise, SUMMARY_COLUMNS, summary=True))
        else:
            parts.append(markdown(elementwise))
    if gemm:
        parts.append(describe_gemm(gemm, machine_info or {}))
        if gemm_detail:
            parts.append(_render(GEMM_COLUMNS, gemm_table_cells(gemm), 4))
        else:
            warm = gemm_summary_cells(gemm)
            if warm:
                parts.append(_render(GEMM_SUMMARY_COLUMNS, warm, 3))
            cold = cold_summary_cells(gemm)
            if cold:
                parts.append(_render(COLD_SUMMARY_COLUMNS, cold, 3))
    return "\n\n".join(parts)


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
    one_thread = "--one-thread" in args
    args = [a for a in args if a not in ("--summary", "--one-thread")]
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
    if one_thread:
        groups = [g for g in ([r for r in g if r.threads == 1] for g in groups) if g]
    if not groups:
        print(f"{path} holds no qfast benchmarks", file=sys.stderr)
        return 1
    machine_info = data.get("machine_info") or {}
    print(describe_machine(machine_info))
    print()
    print(report(groups, summary=summary, gemm_detail=not summary, machine_info=machine_info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

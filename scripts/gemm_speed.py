"""One-thread speed of qfast's matrix products on chosen ISA paths and builds, side by side.

    python scripts/gemm_speed.py                          # the active path
    python scripts/gemm_speed.py --isa avx2 avx512vnni    # each path (QFAST_ISA) in turn
    python scripts/gemm_speed.py --build before=/path/to/python --build after=python
    python scripts/gemm_speed.py --quick                  # in-cache rows only, no cold rows
    python scripts/gemm_speed.py --only matmul_int8       # rows whose operation says so

Each (build, path) pair runs in a worker process of its own (``PYTHONPATH`` = the build's
``python/`` folder, ``QFAST_ISA`` = the path, one qfast thread, and OpenBLAS told the CPU is a
Haswell when the path is an AVX2 one, as ``make test-avx2`` does); the cases are handed to the
workers in turn, case by case and round by round, so that a busy spell of a shared machine falls
on all of them alike. Each figure is the best of ``--rounds`` rounds, each round the mean of as
many calls as fill ``--seconds``.

Rows: ``matmul_int8`` (s8 x s8 and u8 x s8), ``linear`` W8A8 per-channel, W4A8 and W4A16 at
group 32 and 128, at M = 1, 16 and 128 with the weights in cache (K = N = 4096), and the GEMVs
(M = 1) with the weights beyond the last-level cache (enough distinct copies to fill 4x the LLC,
read in turn), next to the read bandwidth (``X.max()`` over 4x the LLC) measured by the same
worker. "G MAC/s" is multiply-adds per second; "% peak" is against ``peak_gmacs(mix)``, the
register-only loop of the instruction mix that ran ("int8" for 8-bit panels, "w4a8" for 4-bit
ones; float mode has none); "GB/s" (GEMVs) is weight bytes (codes and scales) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
K = N = 4096
MS = (1, 16, 128)
# (name, bits, group_size, compute); group_size None = per channel
SCHEMES = (
    ("W8A8", 8, None, "int8"),
    ("W4A8 g32", 4, 32, "int8"),
    ("W4A8 g128", 4, 128, "int8"),
    ("W4A16 g32", 4, 32, "float"),
    ("W4A16 g128", 4, 128, "float"),
)


def cases(quick: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in (1, 4, 16, 128):
        for lhs in ("s8", "u8"):
            out.append(dict(op="matmul_int8", scheme=f"{lhs}s8", m=m, k=K, n=N))
    for name, _, _, _ in SCHEMES:
        for m in MS:
            out.append(dict(op="linear", scheme=name, m=m, k=K, n=N))
    if not quick:
        out.append(dict(op="read", scheme="X.max()", m=0, k=0, n=0))
        for name, _, _, _ in SCHEMES:
            out.append(dict(op="linear cold", scheme=name, m=1, k=K, n=N))
    return out


# --- the worker (runs inside one build / path) ----------------------------------------------


class Worker:
    def __init__(self, seconds: float) -> None:
        import numpy as np

        import qfast

        qfast.set_num_threads(1)
        self.np, self.qfast, self.seconds = np, qfast, seconds
        self.rng = np.random.default_rng(0)
        self.w = self.rng.standard_normal((N, K), np.float32)
        self.qts: dict[str, Any] = {}
        self.cold: dict[str, list[Any]] = {}
        self.read_buf: Any = None
        self.llc = self._llc_bytes()

    @staticmethod
    def _llc_bytes() -> int:
        best = 32 << 20
        for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            try:
                size = (idx / "size").read_text().strip()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
                best = max(best, int(size.rstrip("KM")) * mult)
            except (OSError, ValueError):
                pass
        return best

    def qtensor(self, scheme: str) -> Any:
        if scheme not in self.qts:
            _, bits, gs, _ = next(s for s in SCHEMES if s[0] == scheme)
            axis = 0 if gs is None else None
            self.qts[scheme] = self.qfast.quantize(
                self.w, bits, symmetric=True, axis=axis, group_size=gs
            )
        return self.qts[scheme]

    def time(self, fn: Any) -> float:
        fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, int(self.seconds / one))
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        np, qfast = self.np, self.qfast
        op, scheme, m = case["op"], case["scheme"], case["m"]
        if op == "read":
            if self.read_buf is None:
                self.read_buf = np.ones(max(4 * self.llc, 1 << 30) // 4, np.float32)
            s = self.time(self.read_buf.max)
            return dict(gbs=self.read_buf.nbytes / s / 1e9)
        if op == "matmul_int8":
            a = self.rng.integers(-128, 128, (m, K), dtype=np.int8)
            if scheme.startswith("u8"):
                a = a.view(np.uint8)
            b = self.rng.integers(-128, 128, (K, N), dtype=np.int8)
            s = self.time(lambda: qfast.matmul_int8(a, b))
            return dict(gmacs=m * K * N / s / 1e9, mix="int8")
        _, bits, _, compute = next(x for x in SCHEMES if x[0] == scheme)
        qt = self.qtensor(scheme)
        nbytes = qt.data.nbytes + qt.scale.nbytes
        x = self.rng.standard_normal((m, K)).astype(np.float32)
        mix = ("w4a8" if bits == 4 else "int8") if compute == "int8" else None
        if op == "linear":
            s = self.time(lambda: qfast.linear(x, qt, compute=compute))
            gbs = nbytes / s / 1e9 if m == 1 else None  # weight streaming: GEMVs only
            return dict(gmacs=m * K * N / s / 1e9, gbs=gbs, mix=mix)
        if scheme not in self.cold:
            self.cold.clear()  # one scheme's copies at a time: each set is 4x the LLC
            copies = max(2, -(-4 * self.llc // nbytes))
            self.cold[scheme] = [
                qfast.QTensor(
                    qt.data ^ np.uint8(i & 0xFF) if qt.data.dtype == np.uint8 else qt.data.copy(),
                    qt.shape,
                    qt.bits,
                    qt.signed,
                    qt.scale.copy(),
                    None,
                    axis=qt.axis,
                    group_size=qt.group_size,
                )
                for i in range(copies)
            ]
        qts = self.cold[scheme]

        def sweep() -> None:
            for q in qts:
                qfast.linear(x, q, compute=compute)

        s = self.time(sweep) / len(qts)
        return dict(gmacs=K * N / s / 1e9, gbs=nbytes / s / 1e9, mix=mix)

    def peaks(self) -> dict[str, float | None]:
        return {mix: self.qfast._qfast.peak_gmacs(mix) for mix in ("int8", "w4a8")}


def worker_main(seconds: float) -> None:
    w = Worker(seconds)
    info = w.qfast.cpu_info()
    print(json.dumps(dict(isa=info["isa"], peaks=w.peaks())), flush=True)
    for line in sys.stdin:
        print(json.dumps(w.run(json.loads(line))), flush=True)


# --- the driver -------------------------------------------------------------------------------


def spawn(build: str, path: str, isa: str | None, seconds: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=path, QFAST_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if isa:
        env["QFAST_ISA"] = isa
        if isa.startswith("avx2") or isa == "avxvnni":
            env["OPENBLAS_CORETYPE"] = "Haswell"
    cmd = [sys.executable, __file__, "--worker", "--seconds", str(seconds)]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--isa", nargs="*", default=[None], help="paths to run (QFAST_ISA values)")
    ap.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a qfast python/ folder to run (default: this checkout's)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.3, help="timed seconds per figure")
    ap.add_argument("--quick", action="store_true", help="in-cache rows only")
    ap.add_argument("--only", default="", help="rows whose operation contains this text")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.seconds)
        return
    builds = [b.split("=", 1) for b in args.build] or [["qfast", str(ROOT / "python")]]
    workers = {}
    for name, path in builds:
        for isa in args.isa:
            proc = spawn(name, str(Path(path).resolve()), isa, args.seconds)
            assert proc.stdout is not None
            head = json.loads(proc.stdout.readline())
            label = f"{name}:{head['isa']}" if len(builds) > 1 else head["isa"]
            workers[label] = (proc, head["peaks"])
    for label, (_, peaks) in workers.items():
        print(f"{label}: peak int8 {peaks['int8'] or 0:.1f}, w4a8 {peaks['w4a8'] or 0:.1f} G MAC/s")
    best: dict[tuple[int, str], dict[str, Any]] = {}
    todo = [c for c in cases(args.quick) if args.only in f"{c['op']} {c['scheme']}"]
    for _ in range(args.rounds):
        for i, case in enumerate(todo):
            for label, (proc, _) in workers.items():
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(case) + "\n")
                proc.stdin.flush()
                got = json.loads(proc.stdout.readline())
                key = (i, label)
                speed = got.get("gmacs", got.get("gbs", 0.0))
                if key not in best or speed > best[key].get("gmacs", best[key].get("gbs", 0.0)):
                    best[key] = got
    labels = list(workers)
    head = ["operation", "MxKxN"] + [
        f"{lab} {col}" for lab in labels for col in ("G MAC/s", "GB/s", "% peak")
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(":--" if j < 2 else "--:" for j in range(len(head))) + "|")
    for i, case in enumerate(todo):
        shape = "-" if case["op"] == "read" else f"{case['m']}x{case['k']}x{case['n']}"
        row = [f"{case['op']} {case['scheme']}", shape]
        for lab in labels:
            got, peaks = best[(i, lab)], workers[lab][1]
            gm, gb, mix = got.get("gmacs"), got.get("gbs"), got.get("mix")
            peak = peaks.get(mix) if mix else None
            row += [
                f"{gm:.1f}" if gm else "-",
                f"{gb:.2f}" if gb else "-",
                f"{100 * gm / peak:.0f}%" if gm and peak else "-",
            ]
        print("| " + " | ".join(row) + " |")
    for proc, _ in workers.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""GGUF Q4_0 / Q8_0 quantize speed: qfast against ggml's ``quantize_row_q4_0`` / ``_q8_0``.

ggml's figures come from its own benchmark, ``test-quantize-perf --op quantize_row_q``, from the
pinned llama.cpp (the ``llama-cpp-python`` sdist that ``scripts/llama_cpp.py`` fetches and
checks), built twice into the cache:

* ``native``: ``-DGGML_NATIVE=ON`` (``-march=native``: AVX-512 where the CPU has it);
* ``haswell``: ``-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
  -DGGML_BMI2=ON`` and no AVX-512 (what ggml runs on an AVX2-only CPU).

Only ggml itself is built (``ggml``, ``ggml-base``, ``ggml-cpu`` as static libraries, the
Release flags ggml's CMake chooses); ``tests/test-quantize-perf.cpp`` is compiled against them
as-is (``-O3``). The result lives in ``$QFAST_CACHE/llama.cpp/perf-<build>-<hash>/``.

qfast's figures come from ``examples/gguf_quantize_perf.rs`` (release profile, LTO: the
library as a wheel ships it), run once on the native path and once with ``QFAST_ISA=avx2``, on
one thread, at the same sizes: 65536 values (256 KiB of float32, test-quantize-perf's
``L2_SIZE``: in L2) and 2^28 values (1 GiB: beyond the cache). The same process measures the
DRAM bandwidth (a 1 GiB float32 copy with ordinary stores, and a 1 GiB read) for the bound.

Timing: every figure is the best of ``--rounds`` rounds, ggml and qfast alternating, so a
round disturbed by another process costs only that round; ratios are taken within one run.

    python scripts/ggml_quantize_perf.py            # build what is missing, measure, print
    python scripts/ggml_quantize_perf.py --rounds 5 --markdown

Beyond the cache the bound is the bytes each value moves between DRAM and the core / the read
bandwidth measured in the same process: 4 bytes of float32 read, and the block bytes per value
(Q4_0 18/32, Q8_0 34/32) read once more by the write-allocate of the output's lines, whose
write-back overlaps the reads (the copy's figures agree: read + write-allocate run at the read
bandwidth, the write-back on top). Q8_0: 4 + 34/32 = 5.06 bytes, Q4_0: 4 + 18/32 = 4.56 bytes
per value. Counting the written bytes twice at the read bandwidth (4 + 2 x 34/32 = 6.1 bytes
for Q8_0) gives a lower figure that Q8_0 beats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_cpp  # scripts/llama_cpp.py: the pinned sdist, the cache, cmake

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("q4_0", "q8_0")
BLOCK_BYTES = {"q4_0": 18, "q8_0": 34}
L2_VALUES = 32 * 2048  # test-quantize-perf's L2_SIZE
DRAM_VALUES = 1 << 28  # 1 GiB of float32

COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_OPENMP=OFF",
    "-DGGML_BUILD_TESTS=OFF",
    "-DGGML_BUILD_EXAMPLES=OFF",
)
BUILDS = {
    "native": ("-DGGML_NATIVE=ON",),
    "haswell": (
        "-DGGML_NATIVE=OFF",
        "-DGGML_SSE42=ON",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON",
        "-DGGML_AVX_VNNI=OFF",
        "-DGGML_AVX512=OFF",
    ),
}
PERF = "test-quantize-perf"


def _log(msg: str) -> None:
    print(f"[ggml_quantize_perf] {msg}", file=sys.stderr, flush=True)


def perf_dir(build: str) -> Path:
    spec = json.dumps(
        {"key": llama_cpp.build_key(), "common": COMMON_FLAGS, "flags": BUILDS[build]}
    )
    tag = hashlib.sha256(spec.encode()).hexdigest()[:12]
    return llama_cpp.cache_dir() / "llama.cpp" / f"perf-{build}-{tag}"


def build_perf(build: str, jobs: int | None = None) -> Path:
    """``test-quantize-perf`` of one ggml build (cached); returns the binary's path."""
    out = perf_dir(build) / PERF
    if out.is_file():
        return out
    with llama_cpp._lock(llama_cpp.cache_dir() / "llama.cpp" / f".{out.parent.name}.lock"):
        if out.is_file():
            return out
        cmake = llama_cpp._ensure_cmake()
        cxx = shutil.which("c++") or shutil.which("g++")
        if cxx is None:
            raise llama_cpp.BuildError("a C++ compiler (c++) is needed for test-quantize-perf")
        sdist = llama_cpp._sdist()
        work = Path(tempfile.mkdtemp(prefix=f"perf-{build}-", dir=out.parent.parent))
        try:
            prefix = f"llama_cpp_python-{llama_cpp.VERSION}/vendor/llama.cpp/"
            with tarfile.open(sdist) as tar:
                members = [
                    m
                    for m in tar.getmembers()
                    if m.name.startswith(prefix + "ggml/") or m.name == prefix + f"tests/{PERF}.cpp"
                ]
                for m in members:
                    m.name = m.name[len(prefix) :]
                tar.extractall(work / "src", members=members, filter="data")
            # ggml configured on its own (the standalone project) wants its pkg-config
            # template, which the sdist leaves out; nothing here installs it.
            (work / "src" / "ggml" / "ggml.pc.in").touch()
            flags = (*COMMON_FLAGS, *BUILDS[build])
            jobs = jobs or os.cpu_count() or 2
            t0 = time.monotonic()
            _log(f"{build}: configuring ggml ({' '.join(flags)})")
            subprocess.run(
                [cmake, "-S", str(work / "src" / "ggml"), "-B", str(work / "build"), *flags],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            _log(f"{build}: building ggml with {jobs} jobs")
            # (GCC's AVX-512 headers warn by the thousand: kept in a log, not printed.)
            with open(work / "build.log", "wb") as log:
                subprocess.run(
                    [cmake, "--build", str(work / "build"), f"-j{jobs}", "--target", "ggml"],
                    check=True,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            libs = {p.name: p for p in (work / "build").rglob("*.a")}
            need = ("libggml.a", "libggml-cpu.a", "libggml-base.a")
            missing = [n for n in need if n not in libs]
            if missing:
                raise llama_cpp.BuildError(f"ggml's build made no {', '.join(missing)}")
            exe = work / PERF
            subprocess.run(
                [cxx, "-O3", "-std=c++17", "-I", str(work / "src" / "ggml" / "include"),
                 "-o", str(exe), str(work / "src" / "tests" / f"{PERF}.cpp"),
                 *(str(libs[n]) for n in need), "-lpthread", "-lm"],
                check=True,
            )  # fmt: skip
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(exe, out.with_suffix(".part"))
            info = {"flags": flags, "seconds": time.monotonic() - t0}
            (out.parent / "DONE").write_text(json.dumps(info, indent=1) + "\n")
            out.with_suffix(".part").rename(out)
            _log(f"{build}: built in {info['seconds']:.0f} s: {out}")
        except subprocess.CalledProcessError as e:
            raise llama_cpp.BuildError(f"building {PERF} ({build}) failed: {e}; see {work}") from e
        else:
            shutil.rmtree(work, ignore_errors=True)
    return out


# -- running -----------------------------------------------------------------------------------


def ggml_cycles(exe: Path, n: int, iters: int) -> dict[str, float]:
    """test-quantize-perf's ``min cycles/32 vals`` (TSC cycles, the fastest of ``iters``
    calls after 5 warm-up calls) of quantize_row_q on ``n`` values, per type."""
    types = [a for t in TYPES for a in ("--type", t)]
    run = subprocess.run(
        [str(exe), "--op", "quantize_row_q", *types, "--size", str(n), "-i", str(iters)],
        check=True,
        capture_output=True,
        text=True,
    )
    out = {}
    for sec in re.split(r"^(?=\S)", run.stdout, flags=re.M):
        ty = sec.split("\n", 1)[0].strip()
        m = re.search(r"min cycles/32 vals\s*:\s*([0-9.]+)", sec)
        if ty in TYPES and m is not None:
            out[ty] = float(m.group(1))
    missing = [t for t in TYPES if t not in out]
    if missing:
        raise RuntimeError(f"{exe.name} printed nothing for {missing}:\n{run.stdout}")
    return out


def build_example() -> Path:
    _log("cargo build --release --example gguf_quantize_perf")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--example", "gguf_quantize_perf"],
        cwd=ROOT,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "gguf_quantize_perf"


def qfast_rates(exe: Path, isa: str | None, sizes: list[int]) -> tuple[str, dict[str, float]]:
    """One run of the example: the path's name and ``{"q4_0@65536": G values/s, ...,
    "tsc": Hz, "copy": GB/s, "read": GB/s}``."""
    env = dict(os.environ, QFAST_NUM_THREADS="1")
    env.pop("QFAST_ISA", None)
    if isa is not None:
        env["QFAST_ISA"] = isa
    run = subprocess.run(
        [str(exe), *map(str, sizes)], check=True, capture_output=True, text=True, env=env
    )
    name, out = "?", {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in TYPES:
            out[f"{parts[0]}@{parts[1]}"] = float(parts[2])
        elif len(parts) == 2 and parts[0] in ("tsc", "copy", "read"):
            out[parts[0]] = float(parts[1])
        elif len(parts) == 2 and parts[0] == "isa":
            name = parts[1]
    return name, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best of (3)")
    p.add_argument("--build-only", action="store_true", help="build both ggml binaries, exit")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.add_argument("-j", "--jobs", type=int, default=None)
    args = p.parse_args(argv)
    try:
        exes = {b: build_perf(b, args.jobs) for b in BUILDS}
    except llama_cpp.BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.build_only:
        for b, e in exes.items():
            print(b, e)
        return 0
    example = build_example()
    paths = {"native": None, "avx2": "avx2"}
    peer = {"native": "native", "avx2": "haswell"}
    sizes = [L2_VALUES, DRAM_VALUES]
    best: dict[tuple[str, str, int, str], float] = {}  # qfast: G values/s, the most
    cycles: dict[tuple[str, int, str], float] = {}  # ggml: TSC cycles per 32 values, the least
    bw: dict[str, float] = {}
    tsc: list[float] = []
    isa_name: dict[str, str] = {}

    for r in range(args.rounds):
        _log(f"round {r + 1} of {args.rounds}")
        for path, isa in paths.items():
            # In L2: 4000 calls of ~5-50 us; beyond the cache: 5 warm-up passes and 5 timed
            # ones over 1 GiB (test-quantize-perf allocates 5 x 1 GiB).
            for n, iters in ((L2_VALUES, 4000), (DRAM_VALUES, 5)):
                for ty, c in ggml_cycles(exes[peer[path]], n, iters).items():
                    key = (path, n, ty)
                    cycles[key] = min(cycles.get(key, float("inf")), c)
            isa_name[path], q = qfast_rates(example, isa, sizes)
            tsc.append(q.pop("tsc"))
            for k in ("copy", "read"):
                bw[k] = max(bw.get(k, 0.0), q.pop(k))
            for k, v in q.items():
                ty, n = k.split("@")
                best[(path, int(n), ty)] = max(best.get((path, int(n), ty), 0.0), v)
    tsc_hz = sorted(tsc)[len(tsc) // 2]
    rows = []
    for path in paths:
        for ty in TYPES:
            for n in sizes:
                g = tsc_hz / (cycles[(path, n, ty)] / 32) / 1e9
                qf = best[(path, n, ty)]
                # 4 bytes read per value, and the output's lines read by the write-allocate
                # (their write-back overlaps the reads), at the read bandwidth.
                bound = bw["read"] / (4 + BLOCK_BYTES[ty] / 32)
                rows.append((isa_name[path], peer[path], ty, n, g, qf, bound))
    where = {L2_VALUES: "L2 (256 KiB)", DRAM_VALUES: "DRAM (1 GiB)"}
    print(
        f"read bandwidth {bw['read']:.1f} GB/s, copy {bw['copy']:.1f} GB/s (read + "
        f"write-allocate + write); TSC {tsc_hz / 1e9:.2f} GHz; fastest call of "
        f"{args.rounds} rounds, one thread"
    )
    if args.markdown:
        print()
        print("| path | type | data | ggml | qfast | qfast / ggml | bound | bound / qfast |")
        print("|:--|:--|:--|--:|--:|--:|--:|--:|")
    else:
        print(
            f"{'path':<10} {'ggml':<8} {'type':<5} {'data':<13} {'ggml G/s':>9} "
            f"{'qfast G/s':>9} {'ratio':>6} {'bound':>6} {'bound/q':>7}"
        )
    for isa, peer_b, ty, n, g, qf, bound in rows:
        beyond = n == DRAM_VALUES
        b = f"{bound:.2f}" if beyond else "-"
        bq = f"{bound / qf:.2f}" if beyond else "-"
        if args.markdown:
            print(
                f"| {isa} (ggml {peer_b}) | {ty.upper()} | {where[n]} | {g:.2f} | {qf:.2f} | "
                f"{qf / g:.2f}x | {b} | {bq} |"
            )
        else:
            print(
                f"{isa:<10} {peer_b:<8} {ty:<5} {where[n]:<13} {g:9.2f} {qf:9.2f} "
                f"{qf / g:6.2f} {b:>6} {bq:>7}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory: peak use of quantize, and allocation failures as MemoryError.

Each case runs in a fresh interpreter (``run_python``): peak memory is that process's RSS
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` once the input exists and
the pool has started, so memory freed earlier does not hide the peak; ``ru_maxrss``, which
also counts the forking parent's RSS from before ``exec``, only where the reset is not
allowed), and the memory-limit cases set ``RLIMIT_AS`` only in the child. A failed
allocation must never abort the process (SIGABRT from Rust's allocator) nor raise pyo3's
``PanicException`` (which ``except Exception`` does not catch): it is a ``MemoryError`` and
the process goes on working.
"""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and RLIMIT_AS: Linux"
)

MiB = 1 << 20

# --- peak memory ----------------------------------------------------------------------------

PEAK = r"""
import json, re, resource, sys
import numpy as np, qfast
shape, dtype, kwargs = json.loads(sys.argv[1])
qfast.quantize(np.ones((64, 65536), np.float32), 8, group_size=32)  # start the thread pool
qfast.quantize(np.ones((64, 65536), np.float32), 8, axis=1)
x = np.ones(shape, dtype)
x[..., ::7] = -3  # varied values, written in place (no temporary raises the peak)
x[..., 1::5] = 2.5
def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:  # reset the high-water mark to the current RSS (import and set-up freed memory since)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, peak = status("VmRSS"), lambda: status("VmHWM")
except OSError:  # ru_maxrss also remembers the parent's RSS from before exec: only a fallback
    base, peak = maxrss(), maxrss
q = qfast.quantize(x, **kwargs)
peak = peak()
# The outputs: the codes and scales as stored, and the zero points twice: as the int32 array
# the kernel returns and packed at the code width as the QTensor stores them (both are alive
# while the QTensor packs them).
zp = q.zero_point
out = q.nbytes + (0 if zp is None else zp.nbytes)
print(json.dumps({"extra": peak - base, "out": out}))
"""


@pytest.mark.parametrize(
    ("shape", "dtype", "kwargs"),
    [
        # The case, a quarter of the size: one grid per 32 values (the grid used to be
        # built in a 16-byte-per-group Rust vector, then copied out).
        ((1024, 32768), "float32", {"bits": 8, "group_size": 32, "symmetric": False}),
        ((1024, 32768), "float32", {"bits": 4, "group_size": 32}),
        # Per-channel along the last axis of a wide array (issue item 16: partial statistics
        # of every column per task, about 35 bytes per column).
        ((4, 1 << 22), "float32", {"bits": 8, "axis": 1, "symmetric": False}),
        ((4, 1 << 22), "float16", {"bits": 4, "axis": -1}),
        ((3, 1 << 21), "float64", {"bits": 8, "axis": 1}),
    ],
)
def test_quantize_peak_memory_is_the_output(shape, dtype, kwargs, run_python, isa_env):
    env = isa_env(num_threads=2)
    # Fixed malloc thresholds: large blocks are mapped and unmapped, not kept in the heap for
    # reuse, so the set-up's freed memory cannot hide the outputs' pages from the RSS.
    env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    proc = run_python(["-c", PEAK, json.dumps([shape, dtype, kwargs])], env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    # The outputs, plus a little scratch (a few line buffers per thread), nothing that grows
    # with the input (measured: 12 to 110 KiB over the outputs).
    assert got["extra"] <= got["out"] + 4 * MiB, (
        f"quantize{kwargs} of {shape} {dtype} raised the peak RSS by {got['extra'] / MiB:.1f} "
        f"MiB for {got['out'] / MiB:.1f} MiB of output"
    )


# --- allocation failures --------------------------------------------------------------------

LIMITED = r"""
import json, re, resource, sys
import numpy as np, qfast, qfast.gguf
case, headroom = sys.argv[1], int(sys.argv[2])
qfast.quantize(np.ones((64, 65536), np.float32), 8, group_size=32)  # start the thread pool
rng = np.random.default_rng(0)
if case == "quantize_broadcast":
    x = np.broadcast_to(np.float32(1), (1 << 28,))  # no memory: 256 MiB of codes
    run = lambda: qfast.quantize(x, 8)
elif case == "quantize_huge":  # the issue's case: 2 TiB of codes
    x = np.broadcast_to(np.float32(1), (1 << 41,))
    run = lambda: qfast.quantize(x, 8)
elif case == "quantize_grid":
    x = np.ones((2048, 32768), np.float32)
    run = lambda: qfast.quantize(x, 8, group_size=32, symmetric=False)
elif case == "dequantize":
    q = qfast.quantize(rng.standard_normal((4096, 8192), np.float32), 2)  # 8 MiB of codes
    run = lambda: qfast.dequantize(q)  # 128 MiB out
elif case == "matmul_int8":
    a = np.ones((1 << 14, 8), np.int8)
    b = np.ones((8, 1 << 14), np.int8)
    run = lambda: qfast.matmul_int8(a, b)  # 1 GiB out
elif case == "matmul_int8_batched":
    a = np.ones((1 << 12, 64, 8), np.int8)
    b = np.ones((1, 8, 64), np.int8)
    run = lambda: qfast.matmul_int8(a, b)  # 64 MiB out
elif case == "linear":
    w = qfast.quantize(np.ones((1 << 14, 8), np.float32), 8, axis=0)
    x = np.ones((1 << 14, 8), np.float32)
    qfast.linear(x[:1], w)  # packs w
    run = lambda: qfast.linear(x, w)  # 1 GiB out
elif case == "gguf_dequantize":
    blocks = qfast.gguf.quantize(np.ones((2048, 4096), np.float32), "Q4_0")  # 4.5 MiB
    run = lambda: qfast.gguf.dequantize(blocks, "Q4_0")  # 32 MiB out
elif case == "gguf_quantize":
    x = np.ones((1 << 14, 8192), np.float32)  # 512 MiB in
    run = lambda: qfast.gguf.quantize(x, "Q8_0")  # 136 MiB out
status = open("/proc/self/status").read()
vm = int(re.search(r"VmSize:\s+(\d+)", status).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.RLIM_INFINITY))
try:
    run()
    result = "ok"
except BaseException as e:  # PanicException is a BaseException
    result = f"{type(e).__name__}: {e}"
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
after = qfast.quantize(np.arange(-127, 128, dtype=np.float32), 8).dequantize()  # still works
print(json.dumps({"result": result, "after": after.tolist()}))
"""


def limited(case: str, headroom: int, run_python, isa_env) -> str:
    proc = run_python(["-c", LIMITED, case, str(headroom)], isa_env(num_threads=2))
    assert proc.returncode == 0, (
        f"{case}: the process died (exit {proc.returncode}) instead of raising MemoryError: "
        f"{proc.stderr[-2000:]}"
    )
    got = json.loads(proc.stdout)
    assert got["after"] == list(range(-127, 128)), got
    return got["result"]


@pytest.mark.parametrize(
    "case",
    [
        "quantize_broadcast",
        "quantize_huge",
        "dequantize",
        "matmul_int8",
        "matmul_int8_batched",
        "linear",
        "gguf_dequantize",
        "gguf_quantize",
    ],
)
def test_refused_allocation_is_memory_error(case, run_python, isa_env):
    result = limited(case, 16 * MiB, run_python, isa_env)
    assert result.startswith("MemoryError: "), result
    assert "smaller pieces" in result or "free memory" in result or "allocate" in result, result


def test_quantize_runs_in_the_memory_of_its_output(run_python, isa_env):
    """The issue's ``ulimit -v`` case: with room for the outputs (16 + 2 x 8 MiB per 64 MiB of
    input at group 32) and a little more, quantize succeeds; it used to abort the process
    allocating a grid of 16 bytes per group in Rust."""
    out = 2048 * 32768 * (1 + 8 / 32)
    assert limited("quantize_grid", int(out) + 24 * MiB, run_python, isa_env) == "ok"


def test_sizes_beyond_the_address_space(run_python, isa_env):
    """Products of dimensions that overflow are refused before anything is allocated."""
    script = """
import numpy as np, qfast
from qfast import QTensor
for make in (
    lambda: qfast.quantize(np.broadcast_to(np.float32(1), (1 << 40, 1 << 30)), 8),
    lambda: qfast.matmul_int8(
        np.broadcast_to(np.int8(1), (1 << 40, 1, 1)), np.broadcast_to(np.int8(1), (1, 1 << 40))),
):
    try:
        make()
        print("no error")
    except BaseException as e:
        print(type(e).__name__)
"""
    proc = run_python(["-c", script], isa_env(num_threads=2))
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.split():
        assert line in ("MemoryError", "ValueError"), proc.stdout

"""Every ISA path gives exactly the scalar path's results.

qfast reads ``QFAST_ISA`` once, at import, so each path runs in its own process: this file,
run as a script (``python test_isa_paths.py OUT.npz``), quantizes and dequantizes a fixed
battery of random and adversarial inputs (every bit width, scheme, granularity and input dtype)
and saves the results; the tests compare each path's file with the scalar path's, byte for
byte.
"""

from __future__ import annotations

import ast
import concurrent.futures
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import qfast

F32 = np.float32
F32MAX = float(np.finfo(F32).max)
AVAILABLE = qfast.cpu_info()["available"]
KNOWN = ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "neon", "neon-dotprod")
LENGTHS = [1, 15, 16, 17, 31, 63, 64, 65, 127, 129, 4097]
DTYPES = {"f32": F32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


# --- the battery (runs in the subprocess) ---------------------------------------------------


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240607)
    out = {}
    for n in LENGTHS:
        mag = 10.0 ** rng.uniform(-3, 3, (3, 1))
        out[f"rand{n}"] = rng.standard_normal((3, n)) * mag
    k = np.arange(-40, 41)
    out["ties"] = np.stack([(k + 0.5) * 0.5, (k + 0.5) * 2.0**-6, np.r_[127, k[2:] + 0.5, -127]])
    edges = np.array([-128.5, -128, -127.5, 126.5, 127, 127.5, 128, 1e30, -1e30, 0.0, -0.0])
    out["edges"] = np.stack([edges, edges / 8, edges / 64])
    sub = np.array([1e-45, -3e-39, 5e-40, 1e-39, -1e-44, 0.0, 2e-40, 1e-38, -7e-39] * 4)
    out["subnormal"] = np.stack([sub, -sub, sub[::-1] * 0.5, np.abs(sub)])
    out["constant"] = np.array([[0.0] * 37, [-0.0] * 37, [2.5] * 37, [-2.5] * 37, [7.0] * 37])
    outlier = rng.standard_normal((4, 70))
    outlier[2, 33] = 1e30
    out["outlier"] = outlier
    out["f32max"] = np.array([[F32MAX, -F32MAX, 1.0] * 11, [1.0, 2.0, -3.0] * 11])
    out["3d"] = rng.standard_normal((4, 5, 33)) * 3
    out["wide"] = rng.standard_normal((2, 300)) * 10.0 ** rng.uniform(-30, 30, (2, 300))
    return out


def _views(x: np.ndarray) -> dict[str, np.ndarray]:
    return (
        {"": x, ".T": x.T, ".rev": x[..., ::-1], ".step": x[..., ::3]} if x.ndim == 2 else {"": x}
    )


def _granularities(ndim: int):
    yield "tensor", {}
    for k in range(ndim):
        yield f"axis{k}", {"axis": k}
    yield "group16", {"group_size": 16}
    yield "group7", {"group_size": 7}


def _record(out: dict[str, np.ndarray], key: str, fn, *args) -> None:
    """The result of ``fn(*args)`` (a list of arrays) as one byte string, or its error."""
    try:
        parts = fn(*args)
    except (ValueError, TypeError) as e:
        out[key + "!error"] = np.frombuffer(f"{type(e).__name__}: {e}".encode(), np.uint8)
        return
    blob = b"".join(
        np.ascontiguousarray(p).tobytes() + str(np.asarray(p).dtype).encode() for p in parts
    )
    out[key] = np.frombuffer(blob, np.uint8)


def _quantized(x, bits, kw, all_outputs):
    q = qfast.quantize(x, bits, **kw)
    parts = [q.data, q.scale, q.dequantize()]
    if q.zero_point is not None:
        parts.append(q.zero_point)
    if all_outputs:
        parts += [q.dequantize(np.float16), q.dequantize(ml_dtypes.bfloat16)]
        # The same grid given back (static quantization) gives the same codes.
        parts.append(qfast.quantize(x, bits, **kw, scale=q.scale, zero_point=q.zero_point).data)
    return parts


def _packed(s, u, n):
    ps, pu = qfast.pack_int4(s), qfast.pack_int4(u)
    return [ps, pu, qfast.unpack_int4(ps, n), qfast.unpack_int4(pu, n, signed=False)]


def _dense(c, bits, n):
    p = qfast.pack(c, bits)
    return [p, qfast.unpack(p, n, bits), qfast.unpack(p, n, bits, signed=False)]


def _linear_tile_cases() -> dict[str, tuple[np.ndarray, qfast.QTensor, str]]:
    """W4A8 / W4A16 / W8A16 ``linear`` over every tile row count (1..8 rows, then 9 and 20: a
    full tile plus a remainder), groups of 32 and 128 with a shorter last one, and the extremes:
    codes -8 / 7 (panel codes 0 / 15) against rows of activations all -128, all 127, mixed."""
    rng = np.random.default_rng(16)
    cases = {}
    for k, gs in [(8, 8), (40, 32), (300, 32), (264, 128), (1031, 128)]:
        n = 37
        W = rng.standard_normal((n, k)).astype(F32)
        for bits in (4, 8):
            for sym in (True, False):
                w = qfast.quantize(W, bits, symmetric=sym, group_size=gs)
                for m in (*range(1, 9), 9, 20):
                    x = (rng.standard_normal((m, k)) * 3).astype(F32)
                    for compute in ("int8", "float"):
                        if bits == 8 and compute == "int8":
                            continue  # W8A8: the int8 tiles of another path
                        key = f"linear_tile/k{k}/g{gs}/b{bits}/{sym}/m{m}/{compute}"
                        cases[key] = (x, w, compute)
        # Extremes: every weight code -8 or 7 (scale 1, zero 0), activations +-127 / -128
        # scaled so that each row's int8 codes are exactly -128 or 127.
        for code in (-8, 7):
            data = qfast.pack_int4(np.full((n, k), code, np.int8)).reshape(n, -1)
            ng = -(-k // gs)
            w = qfast.QTensor(data, (n, k), 4, True, np.ones((n, ng), F32), None, group_size=gs)
            for m in (1, 3, 8):
                # Rows of one sign (every int16 pair sum of a row at its largest) and mixed.
                x = np.where(rng.random((m, k)) < 0.5, -128.0, 127.0).astype(F32)
                x[0::3] = -128.0
                x[1::3] = 127.0
                for compute in ("int8", "float"):
                    key = f"linear_tile/extreme/k{k}/g{gs}/c{code}/m{m}/{compute}"
                    cases[key] = (x, w, compute)
    return cases


def battery() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, base in _inputs().items():
        for vname, x64 in _views(base).items():
            for dname, dtype in DTYPES.items():
                # Every width in float32; the packed and byte widths in the other dtypes.
                widths = range(2, 9) if dname == "f32" else (2, 4, 8)
                if vname and dname not in ("f32", "bf16"):
                    continue
                top = float(ml_dtypes.finfo(dtype).max)
                x = np.clip(x64, -top, top).astype(dtype)
                for bits in widths:
                    for sym in (True, False):
                        for gname, kw in _granularities(x.ndim):
                            key = (
                                f"{name}{vname}/{dname}/b{bits}/{'sym' if sym else 'asym'}/{gname}"
                            )
                            full = bits in (4, 8) and not vname
                            kws = {**kw, "symmetric": sym}
                            _record(out, key, _quantized, x, bits, kws, full)
    # Packing on its own.
    rng = np.random.default_rng(5)
    for n in LENGTHS:
        s = rng.integers(-8, 8, (3, n)).astype(np.int8)
        u = rng.integers(0, 16, (3, n)).astype(np.uint8)
        _record(out, f"pack/{n}", _packed, s, u, n)
        for bits in (3, 5, 6, 7):
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
            c = rng.integers(lo, hi, (3, n)).astype(np.int8)
            _record(out, f"pack/{n}/b{bits}", _dense, c, bits, n)
    # Matrix products: integers exact; linear's float results identical by its fixed order.
    # (The later shapes reach the small-M path, wide tiles and the AVX2 tiles' 128-deep chunks.)
    for m, k, n in [
        (1, 3, 1),
        (3, 17, 5),
        (9, 200, 33),
        (17, 1031, 20),
        (4, 129, 1100),
        (13, 300, 83),
    ]:
        for adt in (np.int8, np.uint8):
            info = np.iinfo(adt)
            a = rng.integers(info.min, info.max + 1, (m, k)).astype(adt)
            b = rng.integers(-128, 128, (k, n)).astype(np.int8)
            key = f"matmul/{m}x{k}x{n}/{adt.__name__}"
            _record(out, key, lambda a, b: [qfast.matmul_int8(a, b)], a, b)
            ext = np.full((m, k), info.max if adt == np.uint8 else info.min, adt)
            _record(out, key + "/extreme", lambda a, b: [qfast.matmul_int8(a, b)], ext, -b - 1)
    x = rng.standard_normal((19, 300)).astype(F32)
    W = rng.standard_normal((37, 300)).astype(F32)
    for bits in (2, 4, 5, 8):
        for kw in ({"axis": 0}, {"group_size": 32}, {"group_size": 100, "symmetric": False}):
            w = qfast.quantize(W, bits, **kw)
            for compute in ("int8", "float"):
                key = f"linear/b{bits}/{kw}/{compute}"
                _record(out, key, lambda w, c: [qfast.linear(x, w, compute=c)], w, compute)
                for rows in (1, 2, 3):  # the one- and two-row (GEMV) tiles
                    key = f"linear/b{bits}/{kw}/{compute}/rows{rows}"
                    fn = lambda w, c, xr: [qfast.linear(xr, w, compute=c)]  # noqa: E731
                    _record(out, key, fn, w, compute, x[:rows])
    for key, (x, w, compute) in _linear_tile_cases().items():
        _record(out, key, lambda x, w, c: [qfast.linear(x, w, compute=c)], x, w, compute)
    # GGUF block formats (SIMD quantizers on AVX2 and AVX-512): the same bytes and errors
    # everywhere.
    import qfast.gguf as qg

    with np.errstate(all="ignore"):
        for name, v in _inputs().items():
            if v.shape[-1] % 32 == 0 or name in ("ties", "subnormal"):
                rows = np.ascontiguousarray(v.reshape(-1, v.shape[-1]), F32)
                rows = rows[:, : rows.shape[1] // 32 * 32] if rows.shape[1] >= 32 else None
                if rows is None:
                    continue
                for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
                    _record(out, f"gguf/{name}/{t}", lambda r, t: [qg.quantize(r, t)], rows, t)
        g = rng.standard_normal((8, 256)).astype(F32) * 10.0 ** rng.uniform(-40, 37, (8, 1))
        g[3, 7] = np.nan
        for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
            _record(out, f"gguf/scaled/{t}", lambda r, t: [qg.quantize(r, t)], g[:3], t)
            _record(out, f"gguf/nonfinite/{t}", lambda r, t: [qg.quantize(r, t)], g, t)
        # Q4_0 . Q8_0 (AVX-512 VNNI kernel vs the portable one): the same float bits.
        for nb in (1, 2, 3, 8, 33):
            w = qg.quantize(rng.standard_normal((5, 32 * nb)).astype(F32), "Q4_0")
            v = qg.quantize(rng.standard_normal(32 * nb).astype(F32) * 100, "Q8_0")
            _record(out, f"gguf/dot/{nb}", lambda w, v: [qg.dot(w, v)], w, v)
    # Non-finite values: the error names the same (first) position on every path.
    for n in (17, 64, 4097):
        for pos in (0, n // 2, n - 1):
            for bad in (np.nan, np.inf, -np.inf):
                x = np.ones((3, n), F32)
                x[2, pos] = bad
                x[2, -1] = np.nan
                for gname, kw in _granularities(2):
                    key = f"nonfinite/{n}/{pos}/{bad}/{gname}"
                    _record(out, key, lambda x, kw: [qfast.quantize(x, 8, **kw).data], x, kw)
    return out


def _main(path: str) -> None:
    out = battery()
    out["!isa"] = np.frombuffer(qfast.cpu_info()["isa"].encode(), np.uint8)
    keys = sorted(out)
    ends = np.cumsum([out[k].size for k in keys])
    np.savez(path, keys=np.array(keys), ends=ends, blob=np.concatenate([out[k] for k in keys]))


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        keys, ends, blob = f["keys"], f["ends"], f["blob"]
    starts = np.concatenate([[0], ends[:-1]])
    return {str(k): blob[a:b] for k, a, b in zip(keys, starts, ends)}


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def path_outputs(tmp_path_factory, isa_env, run_python):
    """{isa: {key: array}}: the battery run once on every available path (in parallel)."""
    tmp = tmp_path_factory.mktemp("isa")
    script = str(Path(__file__).resolve())

    def run(isa):
        path = tmp / f"{isa}.npz"
        proc = run_python([script, str(path)], isa_env(isa))
        assert proc.returncode == 0, f"QFAST_ISA={isa}: {proc.stderr[-3000:]}"
        return isa, _load(path)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, AVAILABLE))


def test_scalar_is_available():
    assert AVAILABLE[0] == "scalar"
    assert set(AVAILABLE) <= set(KNOWN)


@pytest.mark.parametrize("isa", AVAILABLE)
def test_path_reports_its_name(isa, path_outputs):
    assert bytes(path_outputs[isa]["!isa"]).decode() == isa


@pytest.mark.parametrize("isa", [i for i in AVAILABLE if i != "scalar"])
def test_path_matches_scalar_exactly(isa, path_outputs):
    want = {k: v for k, v in path_outputs["scalar"].items() if k != "!isa"}
    got = {k: v for k, v in path_outputs[isa].items() if k != "!isa"}
    assert len(want) > 5000
    errors = [k for k in want if k.endswith("!error")]
    assert all("nonfinite" in k or "f32max" in k for k in errors), errors[:5]
    keys = sorted(set(want) | set(got))
    bad = [
        k for k in keys if k not in got or k not in want or got[k].tobytes() != want[k].tobytes()
    ]
    assert not bad, f"{isa} differs from scalar in {len(bad)} of {len(want)} cases, e.g. {bad[:10]}"


def test_scalar_battery_is_the_reference(path_outputs):
    # The scalar subprocess really ran the battery: a few of its codes against the NumPy
    # reference of DESIGN.md (the full comparison is in test_properties.py).
    from reference import reference_quantize

    for name in ("rand17", "ties", "edges"):
        x = _inputs()[name].astype(F32)
        codes, _, _ = reference_quantize(x, 8, True, 0, None)
        blob = path_outputs["scalar"][f"{name}/f32/b8/sym/axis0"].tobytes()
        assert blob.startswith(codes.astype(np.int8).tobytes()), name


def test_linear_tile_cases_are_the_reference(path_outputs):
    # The linear tile cases of the battery (every path matches scalar byte for byte, above)
    # against NumPy: float mode is x @ dequantize(w).T up to the accumulation order, int8 mode
    # the same with each row of x on its symmetric INT8 grid; extremes exactly.
    from reference import reference_quantize

    checked = 0
    for key, (x, w, compute) in _linear_tile_cases().items():
        got = np.frombuffer(path_outputs["scalar"][key].tobytes()[: x.shape[0] * 37 * 4], F32)
        got = got.reshape(x.shape[0], 37)
        wd = w.dequantize().astype(np.float64)
        if compute == "int8":
            codes, scale, _ = reference_quantize(x, 8, True, 0, None)
            xs = codes.astype(np.float64) * np.asarray(scale, np.float64).reshape(-1, 1)
        else:
            xs = x.astype(np.float64)
        want = xs @ wd.T
        if "extreme" in key:
            # Integer products (int8 mode: codes times the row's scale): exact in float32.
            np.testing.assert_array_equal(got, want.astype(F32), err_msg=key)
        else:
            bound = 1e-5 * (np.abs(xs) @ np.abs(wd).T) + 1e-30
            assert (np.abs(got - want) <= bound).all(), key
        checked += 1
    assert checked >= 300


@pytest.mark.parametrize("isa", [i for i in ("avx2", "avx512") if i in AVAILABLE])
def test_w4a8_peak_loop_on_avx2_tiles(isa, isa_env, run_python):
    # AVX2 and AVX-512 without VNNI run AVX2's W4A8 tile: each has that tile's register loop.
    code = "import qfast; print(qfast._qfast.peak_gmacs('w4a8'))"
    proc = run_python(["-c", code], isa_env(isa))
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = float(proc.stdout.strip())
    assert peak > 1.0, peak


@pytest.mark.parametrize("value", [*(i for i in KNOWN if i not in AVAILABLE), "bogus", "avx9"])
def test_unsupported_isa_fails_at_import(value, isa_env, run_python):
    proc = run_python(["-c", "import qfast"], isa_env(value))
    assert proc.returncode != 0
    err = proc.stderr
    assert "QFAST_ISA" in err and value in err, err[-2000:]
    listed = err.strip().splitlines()[-1]
    for isa in AVAILABLE:
        assert isa in listed, listed


@pytest.mark.parametrize(("value", "want"), [(" Scalar ", "scalar"), ("", None)])
def test_isa_names_are_forgiving(value, want, isa_env, run_python):
    code = "import qfast; print(qfast.cpu_info()['isa'])"
    proc = run_python(["-c", code], isa_env(value))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (want or AVAILABLE[-1])


def test_peak_loop_per_mix(isa_env, run_python):
    with pytest.raises(ValueError, match="int8"):
        qfast._qfast.peak_gmacs("int16")
    # Scalar has no register-only loop; a path's loop is timed, so it is positive where present.
    code = "import qfast; print([qfast._qfast.peak_gmacs(m) for m in ('int8', 'w4a8')])"
    proc = run_python(["-c", code], isa_env("scalar"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[None, None]"
    for isa in ("avxvnni", "avx512vnni"):
        if isa in AVAILABLE:
            proc = run_python(["-c", code], isa_env(isa))
            assert proc.returncode == 0, proc.stderr[-2000:]
            peaks = ast.literal_eval(proc.stdout.strip())
            assert all(p is not None and p > 1.0 for p in peaks), (isa, peaks)

    # AVX2's exact int8 loop (vpmaddwd + vpaddd), which AVX-512 without VNNI runs too.
    code = "import qfast; print(qfast._qfast.peak_gmacs('int8'))"
    for isa in ("avx2", "avx512"):
        if isa in AVAILABLE:
            proc = run_python(["-c", code], isa_env(isa))
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert float(proc.stdout) > 1.0, (isa, proc.stdout)


# Exact products through each path's integer tiles, against NumPy's int64 (in a subprocess, as
# QFAST_ISA is read at import): matmul_int8 on both sides of the small-M path (M <= 4 streams
# `b`, larger M runs the packed tiles and passes of every row count) up to the deepest K whose
# worst case fits int32, at its extremes; `linear` W8A8 / W4A8 with activations that quantize
# to themselves (max |x| = 127: scale 1) and power-of-two weight scales, K = 256, so that every
# float partial sum is an integer below 2**24 and the result must equal the int64 product.
END_TO_END = r"""
import numpy as np, qfast
from qfast._qfast import QfastError
rng = np.random.default_rng(16)
bad = []
def check(name, got, want):
    if got.shape != want.shape or not np.array_equal(got.astype(np.int64), want):
        i = np.flatnonzero(got.astype(np.int64).ravel() != want.ravel())[:3]
        bad.append(f"{name}: {i.size} differ, e.g. {i} got {got.ravel()[i]} want {want.ravel()[i]}")
for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16):
    for k, n in ((1, 1), (7, 33), (200, 40), (1031, 70), (4096, 17)):
        for adt in (np.int8, np.uint8):
            info = np.iinfo(adt)
            a = rng.integers(info.min, info.max + 1, (m, k)).astype(adt)
            b = rng.integers(-128, 128, (k, n)).astype(np.int8)
            want = a.astype(np.int64) @ b.astype(np.int64)
            check(f"matmul {m}x{k}x{n} {adt.__name__}", qfast.matmul_int8(a, b), want)
# The deepest K allowed, every product at its largest magnitude.
for adt, k in ((np.int8, 131071), (np.uint8, 65793)):
    top = 255 if adt == np.uint8 else -128
    for m in (1, 3, 8):
        for bv in (-128, 127):
            a = np.full((m, k), top, adt)
            b = np.full((k, 40), bv, np.int8)
            b[::7, 3] = -b[::7, 3] - 1
            want = a.astype(np.int64) @ b.astype(np.int64)
            assert np.abs(want).max() < 2**31
            check(f"matmul deepest {adt.__name__} m {m} b {bv}", qfast.matmul_int8(a, b), want)
k = 256
for bits in (8, 4):
    hi = 2**bits - 1
    for m in (1, 2, 3, 5, 6, 7, 8, 16):
        for kind in ("random", "extreme"):
            n = 40
            if kind == "random":
                codes = rng.integers(0, hi + 1, (n, k))
                x = rng.integers(-127, 128, (m, k)).astype(np.float32)
            else:
                codes = np.where(np.arange(n * k).reshape(n, k) % 5 == 0, 0, hi)
                x = np.where(np.arange(m * k).reshape(m, k) % 3 == 0, 127, -127).astype(np.float32)
            x[:, 0] = 127  # every row's scale is exactly 1
            for gs in (None, 32, 64):
                g = 1 if gs is None else k // gs
                zp = rng.integers(0, hi + 1, (n, g)).astype(np.int32)
                scale = np.full((n, g), 1.0, np.float32)
                data = codes.astype(np.uint8)
                data = data if bits == 8 else qfast.pack_int4(data)
                kw = {"axis": 0} if gs is None else {"group_size": gs}
                w = qfast.QTensor(data, (n, k), bits, False, scale, zp, **kw)
                zcols = np.repeat(zp, k // g, axis=1).astype(np.int64)
                want = x.astype(np.int64) @ (codes - zcols).T
                check(f"linear W{bits}A8 {kind} m {m} g {gs}", qfast.linear(x, w), want)
print("\n".join(bad) if bad else "ok")
"""


@pytest.mark.parametrize("isa", [i for i in KNOWN if i != "scalar"])
def test_integer_products_exact_per_path(isa, isa_env, run_python):
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU cannot run the {isa} path")
    proc = run_python(["-c", END_TO_END], isa_env(isa))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok", proc.stdout[-3000:]


if __name__ == "__main__":
    _main(sys.argv[1])

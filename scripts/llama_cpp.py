#!/usr/bin/env python3
"""Build llama.cpp's reference tools (the ones qfast's tests compare against) into a cache.

llama.cpp's source comes from PyPI: the ``llama-cpp-python`` sdist carries it whole in
``vendor/llama.cpp``. The version is pinned (the tests compare bytes and perplexities with this
exact build), the tarball is checked against a pinned sha256, and the build uses Debian's cmake:

* ``-DGGML_NATIVE=OFF``: the binaries run on every x86-64 CPU with AVX2, so a cache built on an
  AVX-512 machine still runs when it moves to an AVX2 one;
* ``-ffp-contract=off`` for C and C++: the scalar reference quantizers are not contracted into
  FMAs (contraction changes their bytes).

The result lives in ``$QFAST_CACHE/llama.cpp/<version>-<hash of the flags>/bin`` (the default
cache is ``~/.cache/qfast``), so changing a flag or the version builds afresh next to the old
one. A cold build of the four tools took 179 s on 2 cores; later calls return at once.

    python scripts/llama_cpp.py build      # build if needed; print the bin directory
    python scripts/llama_cpp.py path       # print the bin directory, exit 1 if not built

Only the standard library is used; cmake is installed with apt-get when it is missing and the
script runs as root (otherwise the error says what to install).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TOOLS = ("llama-quantize", "llama-perplexity", "llama-imatrix", "llama-tokenize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DCMAKE_C_FLAGS=-ffp-contract=off",
    "-DCMAKE_CXX_FLAGS=-ffp-contract=off",
)


class BuildError(RuntimeError):
    """The tools could not be built; the message says why and what to do."""


def cache_dir() -> Path:
    """``$QFAST_CACHE``, else ``$XDG_CACHE_HOME/qfast``, else ``~/.cache/qfast``."""
    env = os.environ.get("QFAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qfast"


def build_key() -> str:
    """The cache key: the version plus a hash of everything that changes the binaries."""
    spec = json.dumps({"v": VERSION, "sha": SDIST_SHA256, "flags": CMAKE_FLAGS, "tools": TOOLS})
    return f"{VERSION}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def build_dir() -> Path:
    return cache_dir() / "llama.cpp" / build_key()


def bin_dir() -> Path | None:
    """The directory holding the built tools, or None when they are not (all) built."""
    d = build_dir() / "bin"
    if (build_dir() / "DONE").is_file() and all((d / t).is_file() for t in TOOLS):
        return d
    return None


def tool(name: str) -> Path:
    """The path of one built tool (``BuildError`` when it has not been built)."""
    d = bin_dir()
    if d is None:
        raise BuildError(f"llama.cpp is not built; run `python {__file__} build`")
    return d / name


def _log(msg: str) -> None:
    print(f"[llama.cpp] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > 3600:
                    raise BuildError(f"another build has held {path} for an hour") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _ensure_cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake:
        return cmake
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        _log("cmake is missing: installing Debian's cmake with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "cmake"]):
            run = subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL)
            if run.returncode != 0:
                break
        cmake = shutil.which("cmake")
        if cmake:
            return cmake
    raise BuildError(
        "cmake is needed to build llama.cpp: install it (`apt-get install cmake`, "
        "`pip install cmake`, or your platform's package) and run this again"
    )


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _download(dest: Path) -> Path:
    """Fetch the pinned sdist through the index's JSON simple API and check its sha256."""
    url = f"{_index_url()}/llama-cpp-python/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            files = json.load(r)["files"]
        src = next(f["url"] for f in files if f["filename"] == SDIST)
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise BuildError(
            f"could not find {SDIST} on {url} ({e}); download it by hand and put it at {dest}"
        ) from e
    _log(f"downloading {src}")
    tmp = dest.with_suffix(".part")
    h = hashlib.sha256()
    with urllib.request.urlopen(src, timeout=600) as r, open(tmp, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != SDIST_SHA256:
        tmp.unlink()
        raise BuildError(f"{SDIST}: sha256 {h.hexdigest()} is not the pinned {SDIST_SHA256}")
    tmp.replace(dest)
    return dest


def _sdist() -> Path:
    path = cache_dir() / "llama.cpp" / SDIST
    if path.is_file():
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        if h == SDIST_SHA256:
            return path
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _download(path)


def build(jobs: int | None = None) -> Path:
    """Build the tools if they are not cached; return their directory."""
    done = bin_dir()
    if done is not None:
        return done
    with _lock(cache_dir() / "llama.cpp" / f".{build_key()}.lock"):
        done = bin_dir()
        if done is not None:
            return done
        cmake = _ensure_cmake()
        sdist = _sdist()
        out = build_dir()
        shutil.rmtree(out, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=out.parent))
        try:
            _log(f"unpacking {sdist.name}")
            prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
            with tarfile.open(sdist) as tar:
                members = [
                    m
                    for m in tar.getmembers()
                    if m.name.startswith(prefix) and m.name != prefix + ".git"
                ]
                for m in members:
                    m.name = m.name[len(prefix) :]
                tar.extractall(work / "src", members=members, filter="data")
            t0 = time.monotonic()
            jobs = jobs or os.cpu_count() or 2
            _log(f"configuring ({' '.join(CMAKE_FLAGS)})")
            subprocess.run(
                [cmake, "-S", str(work / "src"), "-B", str(work / "build"), *CMAKE_FLAGS],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            _log(f"building {', '.join(TOOLS)} with {jobs} jobs (about 3 minutes on 2 cores)")
            subprocess.run(
                [cmake, "--build", str(work / "build"), f"-j{jobs}", "--target", *TOOLS],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (work / "out" / "bin").mkdir(parents=True)
            for t in TOOLS:
                shutil.copy2(work / "build" / "bin" / t, work / "out" / "bin" / t)
            info = {"version": VERSION, "flags": CMAKE_FLAGS, "seconds": time.monotonic() - t0}
            (work / "out" / "DONE").write_text(json.dumps(info, indent=1) + "\n")
            (work / "out").rename(out)
            _log(f"built in {info['seconds']:.0f} s: {out / 'bin'}")
        except subprocess.CalledProcessError as e:
            raise BuildError(f"building llama.cpp failed: {e}; the tree is kept in {work}") from e
        else:
            shutil.rmtree(work, ignore_errors=True)
    done = bin_dir()
    assert done is not None
    return done


# -- ggml's quantizers as a library: the oracle of qfast's GGUF quantizers -----------------------

# The symbols ggml-quants.c needs from the rest of ggml: the row size of the block types it
# quantizes, and an abort. (qfast's own shim, compiled beside ggml-quants.c.)
QUANTS_SHIM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    (void) fmt;
    fprintf(stderr, "ggml_abort at %s:%d\n", file, line);
    abort();
}
/* ggml type id -> (values per block, bytes per block) */
static const int BLOCK[40] = {[2] = 32, [3] = 32, [6] = 32, [7] = 32, [8] = 32, [10] = 256,
    [11] = 256, [12] = 256, [13] = 256, [14] = 256, [20] = 32, [23] = 256};
static const int BYTES[40] = {[2] = 18, [3] = 20, [6] = 22, [7] = 24, [8] = 34, [10] = 84,
    [11] = 110, [12] = 144, [13] = 176, [14] = 210, [20] = 18, [23] = 136};
size_t ggml_type_size(int t) {
    if (t < 0 || t >= 40 || !BYTES[t]) abort();
    return BYTES[t];
}
size_t ggml_row_size(int t, int64_t ne) { return ggml_type_size(t) * ne / BLOCK[t]; }
const char * ggml_type_name(int t) { (void) t; return "?"; }
"""
QUANTS_FLAGS = ("-O3", "-DNDEBUG", "-ffp-contract=off", "-fPIC", "-shared")
QUANTS_LIB = "libggml-quants.so"


def quants_dir() -> Path:
    spec = json.dumps({"key": build_key(), "flags": QUANTS_FLAGS, "shim": QUANTS_SHIM})
    return build_dir().parent / f"quants-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def build_quants() -> Path:
    """``ggml-quants.c`` of the pinned llama.cpp as a shared library (``quantize_q4_K`` and
    the rest, called with ctypes by the tests), compiled as llama-quantize's build compiles it
    (``-O3``, no FMA contraction); cached. Returns the library's path."""
    out = quants_dir() / QUANTS_LIB
    if out.is_file():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError("a C compiler (cc) is needed to build ggml's quantizers")
    with _lock(cache_dir() / "llama.cpp" / f".{quants_dir().name}.lock"):
        if out.is_file():
            return out
        sdist = _sdist()
        work = Path(tempfile.mkdtemp(prefix="quants-", dir=cache_dir() / "llama.cpp"))
        try:
            prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/ggml/"
            with tarfile.open(sdist) as tar:
                members = [
                    m
                    for m in tar.getmembers()
                    if m.name.startswith(prefix)
                    and (m.name.endswith(".h") or m.name.endswith("/ggml-quants.c"))
                ]
                for m in members:
                    m.name = m.name[len(prefix) :]
                tar.extractall(work, members=members, filter="data")
            (work / "shim.c").write_text(QUANTS_SHIM)
            lib = work / QUANTS_LIB
            subprocess.run(
                [cc, *QUANTS_FLAGS, "-I", str(work / "src"), "-I", str(work / "include"),
                 "-o", str(lib), str(work / "src" / "ggml-quants.c"), str(work / "shim.c"),
                 "-lm"],
                check=True,
            )  # fmt: skip
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, out.with_suffix(".part"))
            out.with_suffix(".part").rename(out)
            _log(f"built {out}")
        except subprocess.CalledProcessError as e:
            raise BuildError(f"compiling ggml-quants.c failed: {e}; see {work}") from e
        else:
            shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tools if needed; print their directory")
    b.add_argument("-j", "--jobs", type=int, default=None)
    sub.add_parser("path", help="print the tools' directory; exit 1 when not built")
    sub.add_parser("quants", help="build ggml's quantizers as a library; print its path")
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            print(build(args.jobs))
            return 0
        if args.cmd == "quants":
            print(build_quants())
            return 0
        d = bin_dir()
        if d is None:
            print(f"not built (would be {build_dir() / 'bin'})", file=sys.stderr)
            return 1
        print(d)
        return 0
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

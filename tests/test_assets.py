"""Tests for qfast.assets (the PyPI-backed model/text fetcher).

The happy-path tests use the default cache (``$QFAST_CACHE`` or ``~/.cache/qfast``), so only the
first run downloads (~220 MB through pip, a few seconds on a fast link). Tests that corrupt or
break things use a private cache under ``tmp_path``; most of them are served the gensim wheel
from a local ``PIP_FIND_LINKS`` directory (downloaded once per module) with ``PIP_NO_INDEX=1``,
so that they still go through pip but not through the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qfast import assets
from qfast.assets import cache as assets_cache
from qfast.assets import wikitext as assets_wikitext

LEE = "lee-background"
WIKI = "wikipedia-sample"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def member_path(name: str, dest: str) -> Path:
    return assets.asset_dir(name) / dest


def flip_byte(path: Path, offset: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


class DownloadSpy:
    """Wraps assets_cache._download and counts calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = assets_cache._download

        def spy(asset, dest):
            self.calls.append(asset.name)
            return real(asset, dest)

        monkeypatch.setattr(assets_cache, "_download", spy)


@pytest.fixture(scope="module")
def gensim_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links directory holding the pinned gensim wheel (downloaded once via pip)."""
    d = tmp_path_factory.mktemp("wheels")
    asset = assets.get_asset(LEE)
    wheel = assets_cache._download(asset, d)
    assets_cache._verify_wheel(asset, wheel)
    return d


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gensim_wheel_dir: Path) -> Path:
    """Empty private cache; pip may only use the local gensim wheel."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QFAST_CACHE", str(cache))
    monkeypatch.setenv("PIP_FIND_LINKS", str(gensim_wheel_dir))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return cache


# --------------------------------------------------------------------------------------------
# registry and paths (no network)


def test_registry_is_consistent() -> None:
    assert set(assets.ASSETS) == {"all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", WIKI, LEE}
    for name, a in assets.ASSETS.items():
        assert a.name == name
        assert len(a.wheel_sha256) == 64
        int(a.wheel_sha256, 16)
        dests = [m.dest for m in a.members]
        assert len(set(dests)) == len(dests)
        for m in a.members:
            assert len(m.sha256) == 64
            int(m.sha256, 16)
            assert m.size > 0
            assert not Path(m.dest).is_absolute()
            assert ".." not in Path(m.dest).parts
        assert a.main is None or a.main in dests
        assert "==" in a.requirement
    with pytest.raises(dataclasses.FrozenInstanceError):
        assets.ASSETS[LEE].name = "x"  # type: ignore[misc]


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QFAST_CACHE", str(tmp_path / "q"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "q"
    assert assets.asset_dir(LEE) == tmp_path / "q" / "assets" / LEE
    monkeypatch.delenv("QFAST_CACHE")
    assert assets.cache_dir() == tmp_path / "xdg" / "qfast"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "qfast"


def test_unknown_asset() -> None:
    with pytest.raises(KeyError, match="known assets"):
        assets.fetch("no-such-asset")
    with pytest.raises(ValueError, match="not a text corpus"):
        assets.text("all-MiniLM-L6-v2")


def test_wikitext_to_paragraphs() -> None:
    markup = textwrap.dedent(
        """\
        {{Infobox thing|name={{nested|x}}|image=[[File:X.png|thumb|a [[caption]]]]}}
        '''Quantization''' maps [[real number|real numbers]] to a [[finite set]] of \
        values.<ref>{{cite book|title=Ignored}}</ref> It is used in [[signal processing]] \
        and [http://example.com machine learning].<ref name="a"/> &amp; more<!-- hidden -->.
        [[Image:Y.jpg|right|Caption that should go]]
        {| class="wikitable"
        | cell || cell
        |}
        == History ==
        * A list item that is long enough to keep.
        * short
        == References ==
        * Some reference that should be dropped entirely here.
        [[Category:Mathematics]]
        [[de:Quantisierung]]
        """
    )
    paragraphs = assets_wikitext.wikitext_paragraphs(markup)
    assert paragraphs == [
        "Quantization maps real numbers to a finite set of values. It is used in signal "
        "processing and machine learning. & more.",
        "A list item that is long enough to keep.",
    ]
    # Truncated markup (the dump sample is "shortened") must not raise or leak braces.
    assert (
        assets_wikitext.wikitext_paragraphs("Some words in a sentence here {{cite|unclosed") == []
    )


# --------------------------------------------------------------------------------------------
# happy path: default cache (downloads on the first run only)


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_fetch_default_cache(name: str) -> None:
    asset = assets.get_asset(name)
    path = assets.fetch(name)
    adir = assets.asset_dir(name)
    assert path == (adir / asset.main if asset.main else adir)
    assert path.exists()
    for m in asset.members:
        f = adir / m.dest
        assert f.is_file(), f
        assert f.stat().st_size == m.size
        assert sha256(f) == m.sha256
    assert assets.is_cached(name)
    marker = json.loads((adir / ".qfast-asset.json").read_text())
    assert marker["wheel_sha256"] == asset.wheel_sha256
    assert {k: v["sha256"] for k, v in marker["files"].items()} == {
        m.dest: m.sha256 for m in asset.members
    }
    # Second call: cheap path, no hashing and no pip.
    assert assets.fetch(name) == path


def test_cached_fetch_does_not_hash_or_download(monkeypatch: pytest.MonkeyPatch) -> None:
    assets.fetch(LEE)

    def boom(*args, **kwargs):
        raise AssertionError("should not be called on the fast path")

    monkeypatch.setattr(assets_cache, "_sha256_file", boom)
    monkeypatch.setattr(assets_cache, "_download", boom)
    assert assets.fetch(LEE).is_file()
    assert assets.smollm2_gguf().is_file()


def test_minilm_dir() -> None:
    d = assets.minilm_dir()
    for f in ("model.safetensors", "tokenizer.json", "config.json", "1_Pooling/config.json"):
        assert (d / f).is_file(), f
    config = json.loads((d / "config.json").read_text())
    assert config["hidden_size"] == 384
    assert config["num_hidden_layers"] == 6
    assert json.loads((d / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"]
    tokenizer = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer["model"]["type"] == "WordPiece"
    with open(d / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    # All weights are float32; the only other tensor is the int64 position_ids buffer.
    assert {k for k, v in tensors.items() if v["dtype"] != "F32"} == {"embeddings.position_ids"}
    assert tensors["embeddings.position_ids"]["dtype"] == "I64"
    assert tensors["embeddings.word_embeddings.weight"]["shape"] == [30522, 384]
    assert sum(k.endswith(".attention.self.query.weight") for k in tensors) == 6


def test_smollm2_gguf() -> None:
    path = assets.smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as f:
        magic, version = struct.unpack("<4sI", f.read(8))
    assert magic == b"GGUF"
    assert version >= 2


def test_text_lee_background() -> None:
    t = assets.text(LEE)
    docs = t.splitlines()
    assert len(docs) == 300
    assert docs[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert len(t.split()) > 55_000


def test_text_wikipedia_sample() -> None:
    t = assets.text(WIKI)
    assert 2_400_000 < len(t) < 3_200_000
    assert t.startswith("Anarchism is a political philosophy that advocates self-governed")
    articles = t.strip().split("\n\n")
    assert 90 < len(articles) < 206
    for token in ("{{", "}}", "[[", "]]", "<ref", "&quot;", "&amp;", "'''", "[http"):
        assert token not in t, token
    assert assets.text(WIKI) is t  # parsed once per process


# --------------------------------------------------------------------------------------------
# corruption, re-fetch and errors: private caches


def test_corrupted_file_is_refetched_from_pypi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real network: cold fetch into an empty cache, corrupt, fetch again."""
    monkeypatch.setenv("QFAST_CACHE", str(tmp_path))
    spy = DownloadSpy(monkeypatch)
    path = assets.fetch(LEE)
    assert path == tmp_path / "assets" / LEE / "lee_background.cor"
    # One download also extracted the other asset from the same wheel.
    assert spy.calls == [LEE]
    assert assets.is_cached(WIKI)
    assets.fetch(WIKI)
    assert spy.calls == [LEE]

    good = assets.get_asset(LEE).members[0].sha256
    flip_byte(path)
    assert sha256(path) != good
    assert not assets.is_cached(LEE)
    assert assets.fetch(LEE) == path
    assert sha256(path) == good
    assert spy.calls == [LEE, LEE]
    assert assets.is_cached(LEE)


def test_truncated_and_deleted_files_are_refetched(
    offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DownloadSpy(monkeypatch)
    path = assets.fetch(WIKI)
    good = sha256(path)
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert assets.fetch(WIKI) == path
    assert sha256(path) == good
    path.unlink()
    assert assets.fetch(WIKI) == path
    assert sha256(path) == good
    assert spy.calls == [WIKI, WIKI, WIKI]
    # No temporary files left behind.
    leftovers = [p.name for p in (offline_cache / "assets").rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert not list((offline_cache / "assets").glob(".download-*"))


def test_multi_file_asset_repairs_only_bad_member(
    offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A two-member asset built from the gensim wheel (keeps the test small and offline).
    lee, wiki = assets.get_asset(LEE), assets.get_asset(WIKI)
    combo = dataclasses.replace(lee, name="combo", members=lee.members + wiki.members, main=None)
    monkeypatch.setitem(assets.ASSETS, "combo", combo)
    spy = DownloadSpy(monkeypatch)
    d = assets.fetch("combo")
    assert d.is_dir()
    untouched = d / wiki.members[0].dest
    before = untouched.stat().st_mtime_ns
    flip_byte(d / lee.members[0].dest, offset=5)
    assert assets.fetch("combo") == d
    assert sha256(d / lee.members[0].dest) == lee.members[0].sha256
    assert untouched.stat().st_mtime_ns == before
    assert spy.calls.count("combo") == 2


def test_same_size_corruption_with_restored_mtime_needs_verify(
    offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = assets.fetch(LEE)
    st = path.stat()
    flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    # The cheap check (size + mtime) is fooled by design...
    assert assets.is_cached(LEE)
    # ...a full verification is not.
    spy = DownloadSpy(monkeypatch)
    assert assets.fetch(LEE, verify=True) == path
    assert sha256(path) == assets.get_asset(LEE).members[0].sha256
    assert spy.calls == [LEE]


def test_copied_cache_is_rehashed_not_downloaded(
    offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = assets.fetch(LEE)
    (path.parent / ".qfast-asset.json").unlink()  # e.g. a cache copied without its marker
    os.utime(path, None)
    assert not assets.is_cached(LEE)

    def no_download(*args, **kwargs):
        raise AssertionError("intact files must not be downloaded again")

    monkeypatch.setattr(assets_cache, "_download", no_download)
    assert assets.fetch(LEE) == path
    assert assets.is_cached(LEE)


def test_wrong_wheel_checksum(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = "0" * 64
    real = assets.get_asset(LEE).wheel_sha256
    monkeypatch.setitem(
        assets.ASSETS, LEE, dataclasses.replace(assets.ASSETS[LEE], wheel_sha256=bogus)
    )
    with pytest.raises(assets.AssetError) as exc:
        assets.fetch(LEE)
    msg = str(exc.value)
    assert bogus in msg
    assert real in msg
    assert "gensim==4.4.0" in msg
    assert not (offline_cache / "assets" / LEE).exists()
    assert not assets.is_cached(LEE)


def test_wrong_member_checksum(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = assets.get_asset(LEE)
    bogus = "f" * 64
    member = dataclasses.replace(asset.members[0], sha256=bogus)
    monkeypatch.setitem(assets.ASSETS, LEE, dataclasses.replace(asset, members=(member,)))
    with pytest.raises(assets.AssetError) as exc:
        assets.fetch(LEE)
    msg = str(exc.value)
    assert bogus in msg
    assert asset.members[0].sha256 in msg
    assert not (offline_cache / "assets" / LEE / "lee_background.cor").exists()


def test_pip_cannot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No index and no matching local wheel: what users without network see."""
    monkeypatch.setenv("QFAST_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(assets.AssetError) as exc:
        assets.fetch(LEE)
    msg = str(exc.value)
    assert "gensim==4.4.0" in msg
    assert "QFAST_CACHE" in msg
    assert f"python -m qfast.assets fetch {LEE}" in msg
    assert "PIP_FIND_LINKS" in msg
    assert isinstance(exc.value, RuntimeError)


def test_pip_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFAST_CACHE", str(tmp_path / "cache"))
    # -I -S: no site-packages, hence no pip.
    monkeypatch.setattr(
        assets_cache, "_pip_command", lambda: [sys.executable, "-I", "-S", "-m", "pip"]
    )
    with pytest.raises(assets.AssetError, match="pip is not installed") as exc:
        assets.fetch(LEE)
    assert f"python -m qfast.assets fetch {LEE}" in str(exc.value)

    missing = str(tmp_path / "no-such-python")
    monkeypatch.setattr(assets_cache, "_pip_command", lambda: [missing, "-m", "pip"])
    with pytest.raises(assets.AssetError, match="cannot run") as exc:
        assets.fetch(LEE)
    assert "gensim==4.4.0" in str(exc.value)


_CHILD = """
import importlib.util, logging, sys
spec = importlib.util.spec_from_file_location("qfast_assets_child", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
logging.basicConfig(level=logging.INFO, format="%(message)s")
print(mod.fetch(sys.argv[2]))
"""


def test_concurrent_processes(offline_cache: Path) -> None:
    """Several processes fetching into the same empty cache: one download, all agree."""
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, assets.__file__, name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in (LEE, WIKI, LEE, WIKI)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {Path(out.strip()) for out, _ in results}
    assert paths == {assets.fetch(LEE), assets.fetch(WIKI)}
    downloads = sum(err.count("downloading gensim") for _, err in results)
    assert downloads == 1
    for name in (LEE, WIKI):
        assert assets.is_cached(name)
        m = assets.get_asset(name).members[0]
        assert sha256(assets.asset_dir(name) / m.dest) == m.sha256


# --------------------------------------------------------------------------------------------
# command line


def test_cli_list_and_path(capsys: pytest.CaptureFixture[str]) -> None:
    assets.fetch(LEE)
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in assets.ASSETS:
        assert name in out
    assert assets.main(["path", LEE]) == 0
    assert Path(capsys.readouterr().out.strip()) == assets.fetch(LEE)
    with pytest.raises(SystemExit) as exc:
        assets.main(["fetch", "no-such-asset"])
    assert exc.value.code == 2


def test_cli_fetch(offline_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert assets.main(["path", LEE]) == 1
    capsys.readouterr()
    assert assets.main(["fetch", LEE, WIKI]) == 0
    out = capsys.readouterr().out.split()
    assert [Path(p) for p in out] == [assets.fetch(LEE), assets.fetch(WIKI)]
    assert assets.main(["fetch", "--verify", LEE]) == 0
    assert assets.main(["path", LEE]) == 0


def test_cli_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("QFAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert assets.main(["fetch", LEE]) == 1
    assert "gensim==4.4.0" in capsys.readouterr().err

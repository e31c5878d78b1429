"""Calibration and held-out paragraphs from the Wikipedia sample (``qfast.assets``).

The split, deterministic and without randomness:

- Source: ``qfast.assets.text("wikipedia-sample")``, 106 English Wikipedia articles, one
  paragraph per line, a blank line between articles.
- Paragraphs of fewer than :data:`MIN_WORDS` words (headings, list items, captions that survived
  the markup stripping) are dropped, and so are articles left with none.
- Split by article, so that no article (and no topic) feeds both sides: articles 0, 2, 4, ... (in
  dump order) give the calibration paragraphs, articles 1, 3, 5, ... the held-out ones.
- Within each side, paragraphs are taken round-robin over its articles (the first paragraph of
  every article, then every second paragraph, ...), so that even a few paragraphs cover many
  topics instead of one article.
"""

from __future__ import annotations

import functools
import itertools

__all__ = ["MIN_WORDS", "calibration_paragraphs", "heldout_paragraphs", "split_sizes"]

#: Paragraphs with fewer words (whitespace-separated) are left out.
MIN_WORDS = 20


@functools.lru_cache(maxsize=1)
def _articles() -> tuple[tuple[str, ...], ...]:
    """The articles of the Wikipedia sample, each the tuple of its paragraphs kept."""
    from .. import assets

    articles = []
    for block in assets.text("wikipedia-sample").split("\n\n"):
        paragraphs = tuple(p.strip() for p in block.split("\n") if len(p.split()) >= MIN_WORDS)
        if paragraphs:
            articles.append(paragraphs)
    return tuple(articles)


@functools.lru_cache(maxsize=2)
def _side(parity: int) -> tuple[str, ...]:
    """All paragraphs of one side of the split (0: calibration, 1: held out), round-robin
    over its articles."""
    articles = _articles()[parity::2]
    rounds = itertools.zip_longest(*articles)
    return tuple(p for round_ in rounds for p in round_ if p is not None)


def _take(parity: int, n: int, what: str) -> list[str]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what}: n must be a non-negative integer, got {n!r}")
    pool = _side(parity)
    if n > len(pool):
        raise ValueError(
            f"{what}: asked for {n} paragraphs, the Wikipedia sample has {len(pool)} on this "
            f"side of the split (paragraphs of at least {MIN_WORDS} words); ask for at most "
            f"{len(pool)}"
        )
    return list(pool[:n])


def calibration_paragraphs(n: int) -> list[str]:
    """The first ``n`` calibration paragraphs (even-numbered articles; see the module doc).

    Args:
        n: how many; at most ``split_sizes()[0]``.

    Returns:
        ``n`` paragraphs, the same on every call and machine; a prefix of any longer request.

    Raises:
        ValueError: ``n`` is negative or larger than the calibration side.
    """
    return _take(0, n, "calibration_paragraphs")


def heldout_paragraphs(n: int) -> list[str]:
    """The first ``n`` held-out paragraphs (odd-numbered articles; see the module doc), none
    from an article that :func:`calibration_paragraphs` draws from.

    Args:
        n: how many; at most ``split_sizes()[1]``.

    Returns:
        ``n`` paragraphs, the same on every call and machine; a prefix of any longer request.

    Raises:
        ValueError: ``n`` is negative or larger than the held-out side.
    """
    return _take(1, n, "heldout_paragraphs")


def split_sizes() -> tuple[int, int]:
    """How many paragraphs each side has.

    Returns:
        ``(calibration, held out)``.
    """
    return len(_side(0)), len(_side(1))

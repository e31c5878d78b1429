"""A MediaWiki XML dump reduced to plain text: main-namespace, non-redirect articles, one
paragraph per line, a blank line between articles (what ``qfast.assets.text`` gives for the
``wikipedia-sample`` corpus)."""

from __future__ import annotations

import html
import re

__all__ = ["mediawiki_dump_to_text", "wikitext_paragraphs"]


def mediawiki_dump_to_text(f) -> str:
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
            paragraphs = wikitext_paragraphs(body.text)
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


def wikitext_paragraphs(markup: str) -> list[str]:
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

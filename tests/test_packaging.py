"""The distribution name: what pyproject.toml declares is what every install hint names.

The import name is ``qfast``, but ``qfast`` on PyPI is an unrelated project (a quantum-circuit
synthesis tool), so the distribution has another name. Error messages, docstrings, the README and
the release workflow must all tell users to install that name, with extras that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `pip install 'NAME[extra]'`, quoted or not, in code, messages and Markdown.
INSTALL_EXTRA = re.compile(r"pip install ['\"]?([A-Za-z0-9_.-]+)\[([A-Za-z0-9_,-]+)\]")


def _section(text: str, header: str) -> str:
    """The body of a top-level TOML table (``[project]``), up to the next table header."""
    m = re.search(rf"^\[{re.escape(header)}\][ \t]*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert m, f"pyproject.toml has no [{header}] table"
    return m.group(1)


def _pyproject() -> tuple[str, set[str]]:
    """(the distribution name, its extras) from pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^name\s*=\s*"([^"]+)"', _section(text, "project"), re.M)
    assert m, "pyproject.toml's [project] has no name"
    optional = _section(text, "project.optional-dependencies")
    extras = re.findall(r"^([A-Za-z0-9_-]+)\s*=", optional, re.M)
    return m.group(1), set(extras)


def _install_hints() -> list[tuple[str, str, str]]:
    """(file:line, distribution, extras) for every `pip install 'NAME[...]'` in python/ and the
    README."""
    files = [*sorted((ROOT / "python").rglob("*.py")), ROOT / "README.md"]
    hints = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in INSTALL_EXTRA.finditer(line):
                hints.append((f"{path.relative_to(ROOT)}:{n}", m.group(1), m.group(2)))
    return hints


def test_distribution_is_not_named_qfast() -> None:
    name, _ = _pyproject()
    # PEP 503 normalisation: "qfast", "QFast" and "q_fast" are not all the same, but these are.
    assert re.sub(r"[-_.]+", "-", name).lower() != "qfast", (
        "the PyPI name 'qfast' belongs to an unrelated project"
    )


def test_every_install_hint_names_the_distribution() -> None:
    name, extras = _pyproject()
    hints = _install_hints()
    # The CLI, qfast.models (module and message) and the README all give one.
    assert len(hints) >= 5, hints
    wrong = [h for h in hints if h[1] != name or not set(h[2].split(",")) <= extras]
    assert not wrong, f"install hints not naming {name!r} with one of {sorted(extras)}: {wrong}"


def test_readme_and_release_name_the_distribution() -> None:
    name, _ = _pyproject()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"pip install {name}`" in readme
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert f"https://pypi.org/project/{name}/" in release
    assert f"metadata('{name}')" in release

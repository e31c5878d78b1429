"""``qfast.gguf``: GGUF block formats and files, kept where users import them from; the code
is in :mod:`qfast.formats.gguf` (``blocks`` and ``file``)."""

from __future__ import annotations

from .formats.gguf import *  # noqa: F403  (the same names, re-exported)
from .formats.gguf import __all__ as __all__
from .formats.gguf import __doc__ as __doc__  # help(qfast.gguf) documents the formats

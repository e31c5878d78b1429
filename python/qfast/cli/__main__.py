"""``python -m qfast.cli``: the ``qfast`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
